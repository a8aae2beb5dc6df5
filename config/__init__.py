"""Typed settings (defaults, file, environment) and logging setup."""
