"""What every command needs: settings, required values, an engine for one call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from labs_analytics.settings import Settings
from labs_analytics.storage.database import create_engine

T = TypeVar("T")


def load_settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def require(value: str, name: str) -> str:
    if not value:
        typer.echo(
            f"error: {name} is not set (environment or .env); "
            "or use `labs-analytics dev` for embedded servers",
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
