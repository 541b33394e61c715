"""What every command needs: settings, required values, an engine for one call,
and one line (not a traceback) when a server cannot be reached."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import click
import typer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.core import TyperGroup

from labs_analytics.settings import DEV_ENV_FILE, ENV_FILE, Settings
from labs_analytics.storage.database import create_engine

T = TypeVar("T")

# Errors that say "the server is not there or will not let us in", as opposed to
# a bug or a failed statement: those keep their traceback.
_UNREACHABLE_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EADDRNOTAVAIL,
    errno.ETIMEDOUT,
}
_POSTGRES_REFUSALS = (
    asyncpg.PostgresConnectionError,
    asyncpg.InvalidAuthorizationSpecificationError,  # unknown role, wrong password
    asyncpg.InvalidCatalogNameError,  # no such database
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.TooManyConnectionsError,
)
_HINT = (
    "is `make run` (labs-analytics dev) running in this folder? "
    f"Else set {{name}} in the environment or {ENV_FILE}"
)


def load_settings(*, dev_servers: bool = True) -> Settings:
    """Settings from the environment, `.env` and, unless ``dev_servers`` is
    false, the URLs `labs-analytics dev` wrote to `.data/dev.env`."""
    try:
        return Settings() if dev_servers else Settings(_env_file=ENV_FILE)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def require(value: str, name: str) -> str:
    if not value:
        typer.echo(
            f"error: {name} is not set (environment, {ENV_FILE} or {DEV_ENV_FILE}): "
            "start `make run` (labs-analytics dev) in this folder, or set it",
            err=True,
        )
        raise typer.Exit(2)
    return value


def database_url() -> str:
    return require(load_settings().database_url, "DATABASE_URL")


def with_engine(url: str, action: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run one async database action from a synchronous command."""

    async def run() -> T:
        engine = create_engine(url)
        try:
            return await action(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def redacted(url: str) -> str:
    """A server URL to show: its password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        pass
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what it was raised from, and what SQLAlchemy wrapped."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.append(current.__cause__)
        if not current.__suppress_context__:
            pending.append(current.__context__)
        if isinstance(current, DBAPIError) and isinstance(current.orig, BaseException):
            pending.append(current.orig)


def _is_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError | socket.gaierror | ConnectionError):
        return True
    return isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS


def connection_failure(exc: BaseException, settings: Settings) -> str | None:
    """One line naming the server, its URL (no password) and the fix, if ``exc``
    is a failure to reach PostgreSQL or Redis; else None."""
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, RedisConnectionError | RedisTimeoutError):
            return unreachable_message("Redis", settings.redis_url, "REDIS_URL", cause)
    for cause in causes:
        if isinstance(cause, _POSTGRES_REFUSALS) or _is_unreachable(cause):
            return unreachable_message("PostgreSQL", settings.database_url, "DATABASE_URL", cause)
    return None


def unreachable_message(server: str, url: str, name: str, cause: BaseException) -> str:
    """``error: cannot reach PostgreSQL at <url> (<why>): <the fix>``, one line."""
    reason = " ".join(str(cause).split()) or type(cause).__name__
    return (
        f"error: cannot reach {server} at {redacted(url) or '(no URL)'} ({reason}): "
        + _HINT.format(name=name)
    )


class CommandGroup(TyperGroup):
    """Every command (subcommands included): a server that cannot be reached is
    reported in one line on stderr with exit code 1, not a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # the command's own ending, said already
        except Exception as exc:
            message = _connection_failure_in_use(exc)
            if message is None:
                raise
            typer.echo(message, err=True)
            raise typer.Exit(1) from None


def _connection_failure_in_use(exc: BaseException) -> str | None:
    """`connection_failure` with the URLs the command used (`dev` hands its own
    servers' URLs down in the environment, so they are found here too)."""
    try:
        settings = Settings()
    except ValueError:
        return None
    return connection_failure(exc, settings)
