"""``python -m services.jobs``: runs the batch-job runner until SIGTERM."""

from __future__ import annotations

from services.common import boot
from services.common.runtime import run_service
from services.jobs.service import JobsService
from services.jobs.settings import JobsSettings


async def main() -> None:
    """Reads settings from the environment and runs the service."""
    settings = JobsSettings()
    await run_service(JobsService(settings), settings)


if __name__ == "__main__":
    boot.run(main, JobsSettings)
