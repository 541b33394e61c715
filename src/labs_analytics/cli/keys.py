"""`labs-analytics keys`: create, list and revoke API keys."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer

from labs_analytics.auth.keys import Scope
from labs_analytics.auth.repository import KeyRepository
from labs_analytics.cli.common import T, load_settings, require, with_engine
from labs_analytics.events import PRODUCT_PATTERN

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


def _with_keys(url: str, action: Callable[[KeyRepository], Awaitable[T]]) -> T:
    return with_engine(url, lambda engine: action(KeyRepository(engine)))


@app.command("create")
def keys_create(
    product: Annotated[str, typer.Option(help="The product the key writes and reads.")],
    scope: Annotated[list[Scope], typer.Option(help="ingest, read or admin; repeat for several.")],
    label: Annotated[str, typer.Option(help="A note: who or what uses the key.")] = "",
    rate_limit: Annotated[
        float | None,
        typer.Option(min=0, help="Events per second for this key (default: the deployment's)."),
    ] = None,
) -> None:
    """Create a key. The key is printed once, alone on the last line, and never again."""
    if not re.match(PRODUCT_PATTERN, product):
        raise typer.BadParameter(
            "lowercase letters, digits, _ and -, at most 64", param_hint="--product"
        )
    database_url = require(load_settings().database_url, "DATABASE_URL")
    new_key = _with_keys(
        database_url,
        lambda repo: repo.create(
            product=product, scopes=scope, label=label, rate_limit_per_second=rate_limit
        ),
    )
    scopes = ",".join(sorted(str(s) for s in set(scope)))
    typer.echo(f"created key {new_key.key_id} for product {product} (scopes: {scopes})")
    typer.echo("store it now: it is not shown again")
    typer.echo(new_key.plaintext)


@app.command("list")
def keys_list(
    product: Annotated[str | None, typer.Option(help="Only this product's keys.")] = None,
) -> None:
    """List keys (ids and metadata; the keys themselves are never stored)."""
    database_url = require(load_settings().database_url, "DATABASE_URL")
    rows = _with_keys(database_url, lambda repo: repo.list_keys(product=product))
    typer.echo(f"{'KEY_ID':<14} {'PRODUCT':<16} {'SCOPES':<20} {'CREATED':<20} {'STATUS':<8} LABEL")
    for row in rows:
        status = "revoked" if row.revoked_at else "active"
        created = f"{row.created_at:%Y-%m-%d %H:%M:%S}"
        typer.echo(
            f"{row.key_id:<14} {row.product:<16} {','.join(row.scopes):<20} "
            f"{created:<20} {status:<8} {row.label}"
        )


@app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The KEY_ID from `keys list`.")],
) -> None:
    """Revoke a key. API processes stop accepting it within KEY_CACHE_REFRESH_SECONDS."""
    settings = load_settings()
    database_url = require(settings.database_url, "DATABASE_URL")
    if not _with_keys(database_url, lambda repo: repo.revoke(key_id)):
        typer.echo(f"error: no active key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}; refused within {settings.key_cache_refresh_seconds:g} s")
