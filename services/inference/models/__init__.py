"""Models Ferry ships, and the contract any model follows (see ``contract``).

Each model module exposes a ``build(config)`` factory registered as a ``ferry.models`` entry point
in pyproject.toml; nothing here imports them: ``registry`` loads only the configured ones.
"""
