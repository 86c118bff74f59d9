"""``python -m services.gateway``: serves Ferry's public API until SIGTERM."""

from __future__ import annotations

from services.common import boot
from services.common.runtime import run_service
from services.gateway.service import GatewayService
from services.gateway.settings import GatewaySettings


async def main() -> None:
    """Reads settings from the environment and runs the gateway."""
    settings = GatewaySettings()
    await run_service(GatewayService(settings), settings)


if __name__ == "__main__":
    boot.run(main, GatewaySettings)
