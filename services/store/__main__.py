"""``python -m services.store`` serves; ``python -m services.store migrate`` applies migrations and exits."""

import asyncio
import logging
import sys

import asyncpg

from services.common import boot
from services.common.runtime import run_service
from services.store.migrate import migrate
from services.store.service import StoreService
from services.store.settings import StoreSettings


async def main() -> None:
    settings = StoreSettings()
    await run_service(StoreService(settings), settings)


async def migrate_only() -> int:
    """Applies pending migrations to ``FERRY_STORE_DATABASE_URL`` and exits (for deploy pipelines)."""
    settings = StoreSettings()
    if not settings.database_url:
        print("FERRY_STORE_DATABASE_URL is not set; give store a Postgres URI", file=sys.stderr)
        return 2
    connection = await asyncpg.connect(settings.database_url)
    try:
        applied = await migrate(connection)
    finally:
        await connection.close()
    print(f"schema up to date ({len(applied)} migrations applied now: {applied})")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["migrate"]:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        sys.exit(asyncio.run(migrate_only()))
    boot.run(main, StoreSettings)
