"""`labs-analytics keys`: create, list and revoke API keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Annotated

import orjson
import typer

from labs_analytics.auth.keys import (
    MAX_LABEL_LENGTH,
    MAX_RATE_LIMIT_PER_SECOND,
    MIN_RATE_LIMIT_PER_SECOND,
    InvalidKeyField,
    Scope,
    check_label,
    check_product,
    check_rate_limit,
)
from labs_analytics.auth.repository import KeyInfo, KeyRepository
from labs_analytics.cli.common import T, load_settings, require, with_engine

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


def _with_keys(url: str, action: Callable[[KeyRepository], Awaitable[T]]) -> T:
    return with_engine(url, lambda engine: action(KeyRepository(engine)))


def _checked(check: Callable[[T], T]) -> Callable[[T], T]:
    """An option callback: the repository's own check, as a usage error (exit 2)."""

    def callback(value: T) -> T:
        if value is None:
            return value
        try:
            return check(value)
        except InvalidKeyField as exc:
            raise typer.BadParameter(exc.message) from None

    return callback


def _shown(text: str) -> str:
    """A stored value as is when every character prints, else its escaped repr:
    a label or product written before they were checked (or by hand) cannot
    forge a line of the listing, and the escaping shows."""
    return text if text.isprintable() else repr(text)


@app.command("create")
def keys_create(
    product: Annotated[
        str,
        typer.Option(
            help="The product the key writes and reads.", callback=_checked(check_product)
        ),
    ],
    scope: Annotated[list[Scope], typer.Option(help="ingest, read or admin; repeat for several.")],
    label: Annotated[
        str,
        typer.Option(
            help=f"A note: who or what uses the key (one line, at most {MAX_LABEL_LENGTH} "
            "characters).",
            callback=_checked(check_label),
        ),
    ] = "",
    rate_limit: Annotated[
        float | None,
        typer.Option(
            help=f"Events per second for this key, {MIN_RATE_LIMIT_PER_SECOND:g} to "
            f"{MAX_RATE_LIMIT_PER_SECOND:.0f} (default: the deployment's).",
            callback=_checked(check_rate_limit),
        ),
    ] = None,
) -> None:
    """Create a key. The key is printed once, alone on the last line, and never again."""
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
    product: Annotated[
        str | None,
        typer.Option(help="Only this product's keys.", callback=_checked(check_product)),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List keys (ids and metadata; the keys themselves are never stored).

    RATE is the key's own ingest rate limit in events per second; `default`:
    the deployment's RATE_LIMIT_EVENTS_PER_SECOND (null in --json).
    """
    database_url = require(load_settings().database_url, "DATABASE_URL")
    rows = _with_keys(database_url, lambda repo: repo.list_keys(product=product))
    if as_json:
        for row in rows:
            typer.echo(orjson.dumps({**asdict(row), "status": _status(row)}).decode())
        return
    typer.echo(
        f"{'KEY_ID':<14} {'PRODUCT':<16} {'SCOPES':<20} {'RATE (/s)':<10} {'CREATED':<20} "
        f"{'STATUS':<8} LABEL"
    )
    for row in rows:
        created = f"{row.created_at:%Y-%m-%d %H:%M:%S}"
        scopes = _shown(",".join(row.scopes))
        rate = _rate(row.rate_limit_per_second)
        typer.echo(
            f"{_shown(row.key_id):<14} {_shown(row.product):<16} {scopes:<20} {rate:<10} "
            f"{created:<20} {_status(row):<8} {_shown(row.label)}"
        )


def _status(key: KeyInfo) -> str:
    return "revoked" if key.revoked_at else "active"


def _rate(events_per_second: float | None) -> str:
    """1000000, 2.5, 0.001 (never 1e+06); `default` for the deployment's."""
    if events_per_second is None:
        return "default"
    return f"{events_per_second:f}".rstrip("0").rstrip(".")


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
