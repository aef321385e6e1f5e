"""The anti-corruption layer between the CRM and the ECM: translates each side's
events into the other side's commands and moves document bytes by claim-check."""
