"""Entry point: ``python -m services.inference``."""

from __future__ import annotations

import asyncio

from services.common.runtime import run_service
from services.inference import openmp
from services.inference.settings import InferenceSettings


async def main(settings: InferenceSettings) -> None:
    """Runs the inference service until stopped."""
    from services.inference.service import InferenceService  # imports torch: after the OpenMP setting

    await run_service(InferenceService(settings), settings)


if __name__ == "__main__":
    service_settings = InferenceSettings()
    openmp.apply(service_settings.openmp_spin_count)  # before torch loads
    asyncio.run(main(service_settings))
