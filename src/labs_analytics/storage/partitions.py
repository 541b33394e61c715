"""Daily partitions of ``events``, created ahead of the data.

Rows whose day has no partition go to ``events_default``, so an odd timestamp
never fails a batch. A partition cannot be created for a day that already has
rows in the default partition, which is why we create them ahead of time.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg

from labs_analytics.logs import get_logger

log = get_logger(__name__)


def partition_name(day: date) -> str:
    return f"events_p{day:%Y%m%d}"


def partition_ddl(day: date) -> str:
    # DDL takes no bind parameters; the name and bounds are formatted from a
    # `date`, never from client input.
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    return (
        f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF events "
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )


async def ensure_partitions(conn: asyncpg.Connection, *, today: date, days_ahead: int) -> list[str]:
    """Create the partitions for today and the next ``days_ahead`` days; return those created."""
    created: list[str] = []
    for offset in range(days_ahead + 1):
        day = today + timedelta(days=offset)
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", partition_name(day))
        if exists:
            continue
        try:
            await conn.execute(partition_ddl(day))
        except asyncpg.DuplicateTableError:
            continue  # another flusher made it first
        except asyncpg.CheckViolationError as exc:
            # Rows for that day already sit in the default partition; they stay there.
            log.warning("partition.skipped", partition=partition_name(day), error=str(exc))
            continue
        created.append(partition_name(day))
    if created:
        log.info("partition.created", partitions=created)
    return created
