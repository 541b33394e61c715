"""Raw-data retention: each product keeps its events for ``keep_days`` (default: forever).

A run, for every product with a row in ``product_retention``, removes the
events older than its cutoff (``now - keep_days``, UTC):

- A daily partition whose whole day lies before the cutoff of every product
  with rows in it is detached and dropped: instant, and no dead tuples.
- Otherwise the expired rows are deleted in bounded batches, each its own
  short transaction, from each daily partition and from ``events_default``.

Products without a row are never touched, and a partition holding any of
their rows is never dropped. One runner at a time, across processes: a run
holds a PostgreSQL advisory lock and a second one gives up at once
(``RetentionBusy``).

Rollups (``storage.rollups``) are not raw rows: they outlive this. The drops
and deletes here go straight to the partitions, never through the bulk
writer, so they mark no hour for the rollups on purpose: a rollup keeps
counting what retention removed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Literal

import asyncpg

from labs_analytics.logs import get_logger
from labs_analytics.storage.partitions import partition_name

log = get_logger(__name__)

# pg_try_advisory_lock key of the retention run ("LARETENT" in ASCII): one
# runner per database, whichever process (CLI, flusher) it is in.
RETENTION_LOCK_KEY = 0x4C41_5245_5445_4E54
DEFAULT_BATCH_ROWS = 10_000
DEFAULT_PARTITION = "events_default"
# A DROP needs an exclusive lock on `events`: behind a long read it waits at
# most this long (ingest queues behind it meanwhile), then the partition is
# left for the batched deletes.
DROP_LOCK_TIMEOUT = "5s"

_DAILY = re.compile(r"events_p([0-9]{8})")


class RetentionBusy(Exception):
    """Another retention run holds the lock."""


@dataclass(frozen=True, slots=True)
class Policy:
    product: str
    keep_days: int
    updated_at: datetime | None = None

    def cutoff(self, now: datetime) -> datetime:
        return now - timedelta(days=self.keep_days)


@dataclass(frozen=True, slots=True)
class Step:
    """One thing a run did (or, dry, would do) to one partition."""

    action: Literal["drop", "delete"]
    partition: str
    rows: dict[str, int]  # product → rows removed (or to remove)

    def describe(self, *, dry_run: bool) -> str:
        counts = ", ".join(f"{product}: {n}" for product, n in sorted(self.rows.items()))
        total = sum(self.rows.values())
        if self.action == "drop":
            verb = "would drop" if dry_run else "dropped"
            return f"{verb} partition {self.partition} ({total} rows; {counts or 'empty'})"
        verb = "would delete" if dry_run else "deleted"
        return f"{verb} {total} rows from {self.partition} ({counts})"


@dataclass(slots=True)
class RetentionReport:
    dry_run: bool
    policies: list[Policy] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    @property
    def dropped_partitions(self) -> list[str]:
        return [step.partition for step in self.steps if step.action == "drop"]

    @property
    def rows_by_product(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for step in self.steps:
            for product, n in step.rows.items():
                totals[product] = totals.get(product, 0) + n
        return totals

    def summary(self) -> str:
        rows = self.rows_by_product
        dropped = len(self.dropped_partitions)
        deleted = sum(1 for step in self.steps if step.action == "delete")
        head = "dry run: would remove" if self.dry_run else "removed"
        per_product = ", ".join(f"{p}: {n}" for p, n in sorted(rows.items())) or "nothing"
        return (
            f"{head} {sum(rows.values())} rows of {len(self.policies)} product(s) with "
            f"retention ({per_product}); partitions dropped: {dropped}, "
            f"partitions with rows deleted: {deleted}"
        )


# --- policies ----------------------------------------------------------------


async def set_policy(conn: asyncpg.Connection, product: str, keep_days: int) -> None:
    await conn.execute(
        "INSERT INTO product_retention (product, keep_days) VALUES ($1, $2) "
        "ON CONFLICT (product) DO UPDATE SET keep_days = EXCLUDED.keep_days, updated_at = now()",
        product,
        keep_days,
    )


async def clear_policy(conn: asyncpg.Connection, product: str) -> bool:
    """Remove the product's retention (it keeps everything again); False if it had none."""
    status: str = await conn.execute("DELETE FROM product_retention WHERE product = $1", product)
    return status != "DELETE 0"


async def list_policies(conn: asyncpg.Connection) -> list[Policy]:
    rows = await conn.fetch(
        "SELECT product, keep_days, updated_at FROM product_retention ORDER BY product"
    )
    return [Policy(r["product"], r["keep_days"], r["updated_at"]) for r in rows]


# --- the run -----------------------------------------------------------------


async def run_retention(
    conn: asyncpg.Connection,
    *,
    dry_run: bool,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    now: datetime | None = None,
    progress: Callable[[Step], None] | None = None,
) -> RetentionReport:
    """Enforce every product's retention once (or, ``dry_run``, count what would go).

    ``conn`` must not be inside a transaction: each drop and each delete batch
    commits on its own, so a run stopped half way has done only whole steps.
    Raises ``RetentionBusy`` if another run holds the lock.
    """
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_KEY):
        raise RetentionBusy("another retention run is in progress")
    try:
        return await _run_locked(
            conn,
            dry_run=dry_run,
            batch_rows=batch_rows,
            now=now or datetime.now(UTC),
            progress=progress or (lambda _step: None),
        )
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK_KEY)


async def _run_locked(
    conn: asyncpg.Connection,
    *,
    dry_run: bool,
    batch_rows: int,
    now: datetime,
    progress: Callable[[Step], None],
) -> RetentionReport:
    report = RetentionReport(dry_run=dry_run, policies=await list_policies(conn))
    if not report.policies:
        return report
    cutoffs = {policy.product: policy.cutoff(now) for policy in report.policies}

    def record(step: Step) -> None:
        report.steps.append(step)
        progress(step)

    for day in await _daily_partitions(conn):
        # Only our own names reach SQL: rebuilt from the date, never read back as text.
        name = partition_name(day)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        end = start + timedelta(days=1)
        touched = {p: c for p, c in cutoffs.items() if c > start}
        if not touched:
            continue  # newer than every cutoff: nothing in it has expired
        whole_day = sorted(p for p, c in touched.items() if c >= end)
        if whole_day:
            dropped = await _drop_if_all_expired(conn, name, whole_day, dry_run=dry_run)
            if dropped is not None:
                record(Step("drop", name, dropped))
                continue
        await _delete_expired(conn, name, touched, batch_rows, dry_run=dry_run, record=record)

    # Rows of days without a partition of their own (any day, old or future).
    await _delete_expired(
        conn, DEFAULT_PARTITION, cutoffs, batch_rows, dry_run=dry_run, record=record
    )
    return report


async def _daily_partitions(conn: asyncpg.Connection) -> list[date]:
    names = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass ORDER BY c.relname"
    )
    days: list[date] = []
    for row in names:
        match = _DAILY.fullmatch(row["relname"])
        if match is None:
            continue  # events_default, or not one of ours: never dropped
        try:
            day = datetime.strptime(match.group(1), "%Y%m%d").date()
        except ValueError:
            continue
        if partition_name(day) == row["relname"]:
            days.append(day)
    return days


async def _drop_if_all_expired(
    conn: asyncpg.Connection, name: str, expired_products: list[str], *, dry_run: bool
) -> dict[str, int] | None:
    """Drop partition ``name`` if every row in it belongs to ``expired_products``
    (products whose cutoff is at or after the partition's end); return its rows
    per product, or None when it must stay."""
    keeps = f"SELECT 1 FROM {name} WHERE product <> ALL($1::text[]) LIMIT 1"
    counts = f"SELECT product, count(*) AS n FROM {name} GROUP BY product"
    if dry_run:
        if await conn.fetchval(keeps, expired_products) is not None:
            return None
        return {r["product"]: r["n"] for r in await conn.fetch(counts)}
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")
            # The parent first, as every insert does: no flusher can add a row
            # of a product that keeps this day between the check and the drop,
            # and the lock order cannot deadlock with an insert.
            await conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            if await conn.fetchval(keeps, expired_products) is not None:
                return None
            rows = {r["product"]: r["n"] for r in await conn.fetch(counts)}
            await conn.execute(f"ALTER TABLE events DETACH PARTITION {name}")
            await conn.execute(f"DROP TABLE {name}")
    except asyncpg.LockNotAvailableError:
        log.warning("retention.drop_postponed", partition=name, reason="lock_timeout")
        return None  # the batched deletes below do the same job, more slowly
    log.info("retention.partition_dropped", partition=name, rows=sum(rows.values()))
    return rows


async def _delete_expired(
    conn: asyncpg.Connection,
    name: str,
    cutoffs: dict[str, datetime],
    batch_rows: int,
    *,
    dry_run: bool,
    record: Callable[[Step], None],
) -> None:
    """Delete (or count) each product's rows older than its cutoff from one partition.

    ctids are per table, so the batch is picked and deleted in the same
    partition, never through the parent.
    """
    count = f'SELECT count(*) FROM {name} WHERE product = $1 AND "timestamp" < $2'
    delete = (
        f"DELETE FROM {name} WHERE ctid = ANY(ARRAY("
        f'SELECT ctid FROM {name} WHERE product = $1 AND "timestamp" < $2 LIMIT $3))'
    )
    removed: dict[str, int] = {}
    for product, cutoff in sorted(cutoffs.items()):
        if dry_run:
            n: int = await conn.fetchval(count, product, cutoff)
        else:
            n = 0
            while True:
                status: str = await conn.execute(delete, product, cutoff, batch_rows)
                deleted = int(status.rsplit(" ", 1)[1])
                n += deleted
                if deleted < batch_rows:
                    break
        if n:
            removed[product] = n
    if removed:
        if not dry_run:
            log.info("retention.rows_deleted", partition=name, rows=removed)
        record(Step("delete", name, removed))


__all__ = [
    "RETENTION_LOCK_KEY",
    "Policy",
    "RetentionBusy",
    "RetentionReport",
    "Step",
    "clear_policy",
    "list_policies",
    "run_retention",
    "set_policy",
]
