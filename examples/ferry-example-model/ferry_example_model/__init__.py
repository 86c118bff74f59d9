"""An example Ferry model in its own package (see model.py and this package's pyproject.toml)."""
