"""The built-in "shapes" model's torch-free parts: its vocabulary, its drawn data and its scorer."""
