"""All of Ferry's SQL. Each function takes a connection; callers own transactions."""

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

#: A plain connection or one borrowed from a pool: repositories work with either.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
