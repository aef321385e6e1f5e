"""Message contracts shared by the CRM, the ECM and the bridge.

Each side owns its own vocabulary (crm_events/crm_commands, ecm_events/ecm_commands);
only the bridge imports both.
"""
