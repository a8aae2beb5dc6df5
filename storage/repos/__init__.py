"""Typed repositories over the schema of ``migrations/``, one module per aggregate; the
only place SQL is written."""
