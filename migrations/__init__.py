"""Numbered forward-only SQL files (``0001_initial.sql``, ...), run by ``storage.migrate``."""
