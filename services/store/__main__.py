"""``python -m services.store``."""

import asyncio

from services.common.runtime import run_service
from services.store.service import StoreService
from services.store.settings import StoreSettings


async def main() -> None:
    settings = StoreSettings()
    await run_service(StoreService(settings), settings)


if __name__ == "__main__":
    asyncio.run(main())
