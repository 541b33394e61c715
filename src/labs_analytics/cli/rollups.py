"""`labs-analytics rollups`: roll up every marked hour now, and how far behind the rollups are."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import typer

from labs_analytics.cli.common import load_settings, require
from labs_analytics.settings import to_asyncpg_dsn
from labs_analytics.storage import rollups

app = typer.Typer(
    help="Rollups (events per hour and name, per day and user): refresh them now, or show "
    "how many hours wait (the flusher refreshes them every ROLLUP_INTERVAL_SECONDS).",
    no_args_is_help=True,
)


@app.command("refresh")
def rollups_refresh() -> None:
    """Roll up every marked hour, ROLLUP_MAX_BUCKETS per transaction, until none is left."""
    settings = load_settings()
    dsn = to_asyncpg_dsn(require(settings.database_url, "DATABASE_URL"))

    async def run() -> int:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            total = 0
            while done := await rollups.refresh_rollups(
                pool,
                max_buckets=settings.rollup_max_buckets,
                property_keys=settings.rollup_properties,
            ):
                total += done
            return total
        finally:
            await pool.close()

    buckets = asyncio.run(run())
    typer.echo(f"rolled up {buckets} hour(s)")


@app.command("status")
def rollups_status() -> None:
    """Hours waiting to be rolled up, the oldest mark's age, and rows per rollup table."""
    dsn = to_asyncpg_dsn(require(load_settings().database_url, "DATABASE_URL"))

    async def run() -> rollups.RollupStatus:
        conn = await asyncpg.connect(dsn)
        try:
            return await rollups.rollup_status(conn)
        finally:
            await conn.close()

    status = asyncio.run(run())
    age = (
        f"{(datetime.now(UTC) - status.oldest_mark).total_seconds():.1f} s"
        if status.oldest_mark
        else "-"
    )
    typer.echo(f"hours marked (read raw until rolled up): {status.marks}")
    typer.echo(f"oldest mark age: {age}")
    typer.echo(f"rollup_hourly rows: {status.hourly_rows}")
    typer.echo(f"rollup_user_daily rows: {status.user_daily_rows}")
    typer.echo(f"rollup_users rows: {status.users_rows}")
    keys = ", ".join(status.property_keys) or "none"
    typer.echo(f"rollup_hourly_props rows: {status.props_rows} (keys: {keys})")
    typer.echo(f"rollup_user_daily_names rows: {status.user_daily_names_rows}")
    typer.echo(f"rollup_user_daily_props rows: {status.user_daily_props_rows}")
    typer.echo(f"rollup_user_hours rows: {status.user_hours_rows}")
    typer.echo(f"rollup_daily_props rows: {status.daily_props_rows}")


__all__ = ["app"]
