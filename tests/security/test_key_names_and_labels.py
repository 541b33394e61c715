"""Product names and key labels cannot smuggle lines into what operators read.

`re.match` with a `$` accepted `clubs\\n` as a product (a `$` also matches
before a trailing newline), and a label could hold newlines or terminal
escapes that forged lines of `keys list`. Both are refused at creation now,
by the CLI and by the repository, and `keys list` escapes whatever an older
version (or a hand edit) left in the table.
"""

from __future__ import annotations

import re

import asyncpg
import pytest

from labs_analytics.auth.keys import MAX_LABEL_LENGTH, InvalidKeyField, Scope, generate_key
from labs_analytics.auth.repository import KeyRepository
from labs_analytics.settings import Settings
from labs_analytics.storage.database import create_engine
from tests.helpers import (
    ApiFactory,
    create_key,
    make_event,
    run_cli,
    run_cli_async,
)

BAD_PRODUCTS = ["clubs\n", "clubs\r", "Clubs", "clubs ", "-clubs", "clüb", "c" * 65, ""]
FORGING_LABELS = {
    "newline": "clubs backend\nlak_000000000000_forged  penn-mobile  admin",
    "carriage-return": "clubs\rrevoked",
    "escape-sequence": "clubs\x1b[2K\x1b[1Arevoked",
    "line-separator": "clubs\u2028forged line",
    "paragraph-separator": "clubs\u2029forged line",
    "next-line": "clubs\x85forged line",
    "bidi-override": "clubs \u202edekover",
}


def flat(text: str) -> str:
    """CLI error text without the box drawing, on one line (the box wraps words)."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


async def create_with(settings: Settings, *, product: str = "clubs", label: str = "") -> None:
    engine = create_engine(settings.database_url)
    try:
        await KeyRepository(engine).create(product=product, scopes=[Scope.INGEST], label=label)
    finally:
        await engine.dispose()


# --- products ------------------------------------------------------------------


@pytest.mark.parametrize("product", ["clubs\n", "Clubs"])
async def test_keys_create_refuses_a_product_with_a_trailing_newline_or_capitals(
    settings: Settings, db: asyncpg.Connection, product: str
) -> None:
    result = await run_cli_async(
        settings, "keys", "create", "--product", product, "--scope", "ingest"
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Invalid value for '--product'" in flat(result.stderr)
    assert "Traceback" not in result.stderr
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


def test_keys_list_refuses_a_product_with_a_trailing_newline(settings: Settings) -> None:
    result = run_cli(settings, "keys", "list", "--product", "clubs\n")

    assert result.returncode == 2
    assert "Invalid value for '--product'" in flat(result.stderr)


@pytest.mark.parametrize("product", BAD_PRODUCTS)
async def test_the_repository_refuses_a_product_that_is_not_a_plain_name(
    settings: Settings, db: asyncpg.Connection, product: str
) -> None:
    with pytest.raises(InvalidKeyField, match=r"^product: "):
        await create_with(settings, product=product)
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


@pytest.mark.parametrize(
    "field", [pytest.param("name", id="event-name"), pytest.param("product", id="product")]
)
async def test_an_event_field_with_a_trailing_newline_is_refused_at_the_door(
    api: ApiFactory, field: str
) -> None:
    # The event patterns end in `$` and are checked by pydantic-core (Rust
    # regex, where `$` is the end of the text): this proves it refuses.
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings, product="clubs")
        value = {"name": "post.click\n", "product": "clubs\n"}[field]
        response = await app.post(make_event(**{field: value}), key)

    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_events"
    assert [(d["field"], d["type"]) for d in body["details"]] == [
        (field, "string_pattern_mismatch")
    ]


# --- labels --------------------------------------------------------------------


@pytest.mark.parametrize("label", list(FORGING_LABELS.values()), ids=list(FORGING_LABELS))
async def test_keys_create_refuses_a_label_with_control_characters_or_line_separators(
    settings: Settings, db: asyncpg.Connection, label: str
) -> None:
    result = await run_cli_async(
        settings, "keys", "create", "--product", "clubs", "--scope", "ingest", "--label", label
    )

    assert result.returncode == 2, result.stdout + result.stderr
    error = flat(result.stderr)
    assert "Invalid value for '--label'" in error
    assert "must not contain control characters or line separators" in error
    assert "Traceback" not in result.stderr
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_keys_create_refuses_a_label_over_the_length_limit_and_takes_one_at_it(
    settings: Settings, db: asyncpg.Connection
) -> None:
    too_long = await run_cli_async(
        settings, "keys", "create", "--product", "clubs", "--scope", "ingest",
        "--label", "x" * (MAX_LABEL_LENGTH + 1),
    )  # fmt: skip
    assert too_long.returncode == 2
    assert f"at most {MAX_LABEL_LENGTH} characters" in flat(too_long.stderr)

    plain_unicode = "Penn Labs — clubs équipe 🎉 "
    label = plain_unicode + "x" * (MAX_LABEL_LENGTH - len(plain_unicode))
    created = await run_cli_async(
        settings, "keys", "create", "--product", "clubs", "--scope", "ingest", "--label", label
    )
    assert created.returncode == 0, created.stderr
    assert await db.fetchval("SELECT label FROM api_keys") == label


@pytest.mark.parametrize("label", list(FORGING_LABELS.values()), ids=list(FORGING_LABELS))
async def test_the_repository_refuses_a_label_with_control_characters_or_line_separators(
    settings: Settings, db: asyncpg.Connection, label: str
) -> None:
    with pytest.raises(InvalidKeyField, match=r"^label: must not contain control characters"):
        await create_with(settings, label=label)
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_the_repository_refuses_a_label_over_the_length_limit(
    settings: Settings, db: asyncpg.Connection
) -> None:
    with pytest.raises(InvalidKeyField, match=f"^label: at most {MAX_LABEL_LENGTH} characters"):
        await create_with(settings, label="x" * (MAX_LABEL_LENGTH + 1))
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_keys_list_escapes_a_stored_label_and_product_so_they_cannot_forge_a_line(
    settings: Settings, db: asyncpg.Connection
) -> None:
    # Written as an older version (or a hand edit) could have: no checks.
    forged = generate_key()
    await db.execute(
        "INSERT INTO api_keys (key_id, product, scopes, key_hash, label) "
        "VALUES ($1, $2, '{ingest}', $3, $4)",
        forged.key_id,
        "clubs\n",
        forged.key_hash,
        "\n".join(FORGING_LABELS.values()),
    )
    await create_with(settings, product="penn-mobile", label="mobile backend")

    result = await run_cli_async(settings, "keys", "list")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, lines  # the header and one line per key, nothing forged
    assert all(line.isprintable() for line in lines)
    forged_line = next(line for line in lines if line.startswith(forged.key_id))
    assert "'clubs\\n'" in forged_line
    assert "\\u2028" in forged_line
    assert "\\x1b" in forged_line
    assert "\\u202e" in forged_line
    assert lines[2].endswith(" mobile backend")  # a plain label is shown as it is
