"""SQLite persistence and the content-addressed image store; the only home of SQL."""
