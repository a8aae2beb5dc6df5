"""The device worker and the ledger it records jobs through."""
