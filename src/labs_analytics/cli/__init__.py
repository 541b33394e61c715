"""The `labs-analytics` command: serve, flusher, migrate, keys, txlog, deadletters, dev, psql."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from typing import Annotated

import typer
import uvicorn

from labs_analytics.api.protocol import (
    BoundedHttpToolsProtocol,
    connection_cap,
    raise_descriptor_limit,
)
from labs_analytics.cli import keys, operations, psql
from labs_analytics.cli.common import CommandGroup, load_settings, require
from labs_analytics.cli.dev_servers import dev_servers
from labs_analytics.flusher import Flusher
from labs_analytics.flusher.flusher import default_consumer_name
from labs_analytics.logs import configure_logging, get_logger, uvicorn_log_config
from labs_analytics.queue.connection import create_redis
from labs_analytics.settings import Settings
from labs_analytics.storage import migrations
from labs_analytics.storage.database import create_copy_pool

app = typer.Typer(
    help="Labs Analytics: ingest analytics events over HTTP into PostgreSQL, via a Redis Stream.",
    cls=CommandGroup,  # an unreachable server: one line, not a traceback
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
migrate_app = typer.Typer(help="Database migrations (Alembic).")
app.add_typer(keys.app, name="keys")
app.add_typer(migrate_app, name="migrate")
app.add_typer(operations.deadletters_app, name="deadletters")
app.command()(operations.txlog)

log = get_logger("labs_analytics.cli")


@app.callback()
def _main() -> None:
    try:
        level = Settings().log_level
    except ValueError:
        level = "INFO"  # the command itself reports the bad setting
    configure_logging(level)


# --- serve / flusher ---------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
    no_flusher: Annotated[
        bool, typer.Option("--no-flusher", help="Ingest only; run flushers separately.")
    ] = False,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Serve the HTTP API (with a flusher in each worker unless --no-flusher)."""
    settings = load_settings()
    require(settings.database_url, "DATABASE_URL")
    require(settings.redis_url, "REDIS_URL")
    _serve(host=host, port=port, workers=workers, run_flusher=not no_flusher, access_log=access_log)


def _serve(*, host: str, port: int, workers: int, run_flusher: bool, access_log: bool) -> None:
    # uvicorn workers build their own Settings from the environment, so the
    # CLI hands its choices down that way.
    if not run_flusher:
        os.environ["RUN_FLUSHER"] = "false"
    metrics_dir = None
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker writes its samples here; /metrics sums them up.
        metrics_dir = tempfile.mkdtemp(prefix="labs-analytics-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    settings = load_settings()
    # Workers inherit the limit; each caps its connections below it.
    soft, hard = raise_descriptor_limit(settings.max_connections)
    if connection_cap(settings.max_connections) < settings.max_connections:
        log.warning(
            "serve.descriptor_limit_low",
            nofile_soft=soft,
            nofile_hard=hard,
            max_connections=connection_cap(settings.max_connections),
            hint=f"raise the limit (ulimit -n) to {settings.max_connections + 128} or more",
        )
    # uvicorn re-raises the SIGTERM it has already handled gracefully; a stop
    # we were asked for and completed is a success (exit 0, not 143).
    signal.signal(signal.SIGTERM, _ignore_signal)
    try:
        uvicorn.run(
            "labs_analytics.api.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            # httptools with bounds on head size, head and body time and
            # connections (api/protocol.py): every client may be hostile.
            http=BoundedHttpToolsProtocol,
            timeout_keep_alive=settings.keep_alive_timeout_seconds,  # type: ignore[arg-type]
            log_config=uvicorn_log_config(settings.log_level),
            access_log=access_log,
            server_header=False,
            timeout_graceful_shutdown=round(settings.shutdown_timeout_seconds),
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@app.command()
def flusher() -> None:
    """Run a standalone flusher (a consumer-group member); add more to scale out."""
    settings = load_settings()
    require(settings.database_url, "DATABASE_URL")
    require(settings.redis_url, "REDIS_URL")
    asyncio.run(_run_flusher(settings))


async def _run_flusher(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    redis = create_redis(
        settings.redis_url,
        timeout_seconds=settings.redis_timeout_seconds + settings.flush_interval_ms / 1000,
    )
    consumer = default_consumer_name()
    pool = await create_copy_pool(
        settings.database_url, application_name=f"labs-analytics flusher {consumer}"
    )
    try:
        await Flusher(redis=redis, pool=pool, settings=settings, consumer_name=consumer).run(stop)
    finally:
        await pool.close()
        await redis.aclose()


# --- migrate -----------------------------------------------------------------


@migrate_app.callback(invoke_without_command=True)
def migrate(
    ctx: typer.Context,
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it.")
    ] = False,
) -> None:
    """Upgrade the database to the newest schema (`migrate status` to check it)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings()
    if sql:
        migrations.upgrade_sql(settings.database_url or None)
        return
    migrations.upgrade(require(settings.database_url, "DATABASE_URL"))
    typer.echo("database is at the newest schema", err=True)


@migrate_app.command("status")
def migrate_status() -> None:
    """Show the database's schema revision and the newest one; exit 1 if behind."""
    settings = load_settings()
    state = migrations.status(require(settings.database_url, "DATABASE_URL"))
    typer.echo(f"current: {state.current or '(none)'}")
    typer.echo(f"head:    {state.head}")
    typer.echo("up to date" if state.up_to_date else "behind: run `labs-analytics migrate`")
    if not state.up_to_date:
        raise typer.Exit(1)


# --- dev ---------------------------------------------------------------------


@app.command()
def dev(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """Start embedded PostgreSQL and Redis (under DATA_DIR), migrate, create a key, serve.

    With DATABASE_URL / REDIS_URL set (environment or .env), those servers are
    used instead. Data and ports survive a restart; the servers' URLs go to
    DATA_DIR/dev.env, where the other commands run from this folder find them.
    Ctrl-C stops everything this command started.
    """
    with dev_servers(host=host, port=port):
        _serve(host=host, port=port, workers=1, run_flusher=True, access_log=True)


def _ignore_signal(_signum: int, _frame: object) -> None:
    """The signal was handled already; nothing is left to do."""


# --- psql --------------------------------------------------------------------

# Everything after `psql` is psql's, options included.
app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    options_metavar="[PSQL ARGUMENTS]...",
)(psql.psql)
