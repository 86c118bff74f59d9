"""Entry point: ``python -m services.inference``."""

from __future__ import annotations

import asyncio

from services.common.runtime import run_service
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings


async def main() -> None:
    """Reads settings from the environment and runs the inference service until stopped."""
    settings = InferenceSettings()
    await run_service(InferenceService(settings), settings)


if __name__ == "__main__":
    asyncio.run(main())
