"""The Discord front end; it imports the backend's facade, never storage or torch."""
