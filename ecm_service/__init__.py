"""The ECM: strict counterparty registry, document storage, approvals.
Knows other systems only as opaque external refs."""
