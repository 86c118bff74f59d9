"""Entry point: ``python -m services.inference``."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from services.common import boot
from services.common.runtime import run_service
from services.inference import openmp
from services.inference.settings import InferenceSettings


async def main(settings: InferenceSettings) -> None:
    """Runs the inference service until stopped."""
    from services.inference.service import InferenceService  # imports torch: after the OpenMP setting

    await run_service(InferenceService(settings), settings)


def _start() -> Coroutine[Any, Any, None]:
    settings = InferenceSettings()
    openmp.apply(settings.openmp_spin_count)  # before torch loads
    return main(settings)


if __name__ == "__main__":
    boot.run(_start, InferenceSettings)
