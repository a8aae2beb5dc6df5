"""Job events: the bus contract and its implementations."""
