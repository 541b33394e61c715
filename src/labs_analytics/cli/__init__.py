"""The `labs-analytics` command: serve, flusher, migrate, keys, txlog, deadletters, dev, psql."""

from __future__ import annotations

from typing import Annotated

import typer

from labs_analytics.cli import keys, operations, psql, read, retention, rollups
from labs_analytics.cli.common import CommandGroup, load_settings, require
from labs_analytics.cli.dev_servers import dev_servers
from labs_analytics.cli.serving import run_flusher, serve_api
from labs_analytics.logs import configure_logging
from labs_analytics.settings import Settings
from labs_analytics.storage import migrations

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
app.add_typer(retention.app, name="retention")
app.add_typer(rollups.app, name="rollups")
app.command()(operations.txlog)
app.command()(read.query)
app.command()(read.export)
app.command()(read.summary)


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
    flushers: Annotated[
        int | None,
        typer.Option(min=0, max=64, help="Flusher processes beside the API.  [default: --workers]"),
    ] = None,
    no_flusher: Annotated[
        bool, typer.Option("--no-flusher", help="Ingest only (--flushers 0); run them apart.")
    ] = False,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Serve the HTTP API, with flusher processes beside it (restarted if they die)."""
    settings = load_settings()
    require(settings.database_url, "DATABASE_URL")
    require(settings.redis_url, "REDIS_URL")
    serve_api(
        host=host,
        port=port,
        workers=workers,
        flushers=0 if no_flusher else (workers if flushers is None else flushers),
        access_log=access_log,
    )


@app.command()
def flusher(
    standby: Annotated[
        bool,
        typer.Option(
            "--standby",
            help="Flush only while the stream holds STANDBY_FLUSHER_BACKLOG_EVENTS events or "
            "more (how `serve` runs every flusher but its first).",
        ),
    ] = False,
) -> None:
    """Run a standalone flusher (a consumer-group member); add more to scale out."""
    settings = load_settings()
    require(settings.database_url, "DATABASE_URL")
    require(settings.redis_url, "REDIS_URL")
    run_flusher(settings, standby=standby)


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
        serve_api(host=host, port=port, workers=1, flushers=1, access_log=True)


# --- psql --------------------------------------------------------------------

# Everything after `psql` is psql's, options included.
app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    options_metavar="[PSQL ARGUMENTS]...",
)(psql.psql)
