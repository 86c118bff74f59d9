"""Logging setup: one line per record, tagged with the service, on stderr."""

from __future__ import annotations

import logging


def setup_logging(service: str, level: str) -> None:
    """Configures the root logger for ``service`` at ``level``."""
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s ferry-{service} %(name)s: %(message)s",
        force=True,
    )
