"""`labs-analytics retention`: how long each product keeps its raw events, and enforcing it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import asyncpg
import orjson
import typer

from labs_analytics.auth.keys import InvalidKeyField, check_product
from labs_analytics.cli.common import load_settings, require
from labs_analytics.settings import to_asyncpg_dsn
from labs_analytics.storage import retention
from labs_analytics.storage.event_ids import forget_old_event_ids

T = TypeVar("T")

app = typer.Typer(
    help="Per-product retention of raw events: set, clear, show, run (also daily by the "
    "flusher). Alone, `retention [--dry-run]` is `retention run [--dry-run]`.",
)

DryRun = Annotated[
    bool,
    typer.Option("--dry-run", help="Print what would be dropped and deleted; change nothing."),
]


def _product(value: str) -> str:
    try:
        return check_product(value)
    except InvalidKeyField as exc:
        raise typer.BadParameter(exc.message) from exc


def _with_connection(action: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    url = require(load_settings().database_url, "DATABASE_URL")

    async def run() -> T:
        conn = await asyncpg.connect(to_asyncpg_dsn(url))
        try:
            return await action(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


@app.callback(invoke_without_command=True)
def retention_main(ctx: typer.Context, dry_run: DryRun = False) -> None:
    """Enforce retention now (as `retention run`); `retention --dry-run` prints the plan."""
    if ctx.invoked_subcommand is None:
        _run(dry_run)


@app.command("run")
def retention_run(dry_run: DryRun = False) -> None:
    """Remove every product's expired events (one run at a time across processes).

    Whole daily partitions when all their rows are expired, else batched deletes.
    """
    _run(dry_run)


def _run(dry_run: bool) -> None:
    settings = load_settings()
    now = datetime.now(UTC)

    def step(item: retention.Step) -> None:
        typer.echo(item.describe(dry_run=dry_run))

    async def run(conn: asyncpg.Connection) -> retention.RetentionReport:
        return await retention.run_retention(
            conn,
            dry_run=dry_run,
            batch_rows=settings.retention_delete_batch_rows,
            now=now,
            progress=step,
        )

    typer.echo(f"retention {'plan (dry run)' if dry_run else 'run'} at {now:%Y-%m-%d %H:%M:%S} UTC")
    try:
        report = _with_connection(run)
    except retention.RetentionBusy:
        typer.echo("error: another retention run is in progress; nothing done", err=True)
        raise typer.Exit(1) from None
    if not dry_run:
        # The identity rule's memory too, as the flusher's own retention run does.
        forgotten = _with_connection(
            lambda conn: forget_old_event_ids(
                conn,
                window_days=settings.identity_window_days,
                now=now,
                batch_rows=settings.retention_delete_batch_rows,
            )
        )
        typer.echo(
            f"event ids first received over {settings.identity_window_days} days ago "
            f"forgotten: {forgotten}"
        )
    if not report.policies:
        typer.echo("no product has a retention set: nothing to do (`retention set PRODUCT DAYS`)")
        return
    for policy in report.policies:
        typer.echo(
            f"  {policy.product}: keeps {policy.keep_days} days, "
            f"rows before {policy.cutoff(now):%Y-%m-%d %H:%M:%S} UTC expire"
        )
    typer.echo(report.summary())


@app.command("set")
def retention_set(
    product: Annotated[str, typer.Argument(help="The product.", callback=_product)],
    days: Annotated[int, typer.Argument(min=1, help="Days of raw events to keep.")],
) -> None:
    """Keep PRODUCT's raw events DAYS days; older ones go at the next run."""
    _with_connection(lambda conn: retention.set_policy(conn, product, days))
    typer.echo(f"{product}: keeps {days} days of raw events (enforced by the next run)")


@app.command("clear")
def retention_clear(
    product: Annotated[str, typer.Argument(help="The product.", callback=_product)],
) -> None:
    """Remove PRODUCT's retention: it keeps everything again."""
    if not _with_connection(lambda conn: retention.clear_policy(conn, product)):
        typer.echo(f"error: {product} has no retention set", err=True)
        raise typer.Exit(1)
    typer.echo(f"{product}: keeps everything")


@app.command("show")
def retention_show(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List the products with a retention (all others keep everything)."""
    policies = _with_connection(retention.list_policies)
    now = datetime.now(UTC)
    if as_json:
        for policy in policies:
            typer.echo(
                orjson.dumps(
                    {
                        "product": policy.product,
                        "keep_days": policy.keep_days,
                        "cutoff": policy.cutoff(now),
                        "updated_at": policy.updated_at,
                    }
                ).decode()
            )
        return
    typer.echo(f"{'PRODUCT':<24} {'KEEP DAYS':>9}  {'CUTOFF (UTC)':<20} UPDATED (UTC)")
    for policy in policies:
        updated = (
            f"{policy.updated_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if policy.updated_at else ""
        )
        typer.echo(
            f"{policy.product:<24} {policy.keep_days:>9}  "
            f"{policy.cutoff(now):%Y-%m-%d %H:%M:%S}  {updated}"
        )
    if not policies:
        typer.echo("(no product has a retention: all keep everything)", err=True)


__all__ = ["app"]
