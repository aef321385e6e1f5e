"""The CRM: lenient, fast, for sales. Knows nothing of the ECM."""
