"""Entry point: ``python -m services.inference``."""

from __future__ import annotations

import asyncio
import os

from services.common.runtime import run_service
from services.inference.settings import InferenceSettings


async def main(settings: InferenceSettings) -> None:
    """Runs the inference service until stopped."""
    from services.inference.service import InferenceService  # imports torch: after the OpenMP setting

    await run_service(InferenceService(settings), settings)


if __name__ == "__main__":
    service_settings = InferenceSettings()
    # OpenMP reads these once, when torch loads it; what the environment sets explicitly wins.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", str(service_settings.openmp_spin_count))
    asyncio.run(main(service_settings))
