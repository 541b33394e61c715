"""Reading the transaction log and the dead letters, for the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from labs_analytics.storage.tables import dead_letters, ingest_batches


class TransactionLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def recent(
        self, *, since: datetime | None, failed_only: bool, limit: int
    ) -> Sequence[Row[tuple[object, ...]]]:
        query = select(ingest_batches).order_by(ingest_batches.c.finished_at.desc()).limit(limit)
        if since is not None:
            query = query.where(ingest_batches.c.finished_at >= since)
        if failed_only:
            query = query.where(ingest_batches.c.status != "committed")
        async with self._engine.connect() as conn:
            return (await conn.execute(query)).all()


class DeadLetterStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def fetch(
        self, *, limit: int, ids: Sequence[int] = ()
    ) -> Sequence[Row[tuple[object, ...]]]:
        query = select(dead_letters).order_by(dead_letters.c.id).limit(limit)
        if ids:
            query = query.where(dead_letters.c.id.in_(list(ids)))
        async with self._engine.connect() as conn:
            return (await conn.execute(query)).all()

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(dead_letters))).scalar_one()
            )

    async def remove(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(dead_letters).where(dead_letters.c.id.in_(list(ids)))
            )
        return int(result.rowcount)

    async def purge(self, *, before: datetime | None) -> int:
        statement = delete(dead_letters)
        if before is not None:
            statement = statement.where(dead_letters.c.created_at < before)
        async with self._engine.begin() as conn:
            result = await conn.execute(statement)
        return int(result.rowcount)
