"""The bot's features, one package each: its ``__init__`` holds only ``setup()``."""
