"""`labs-analytics query`: the read API's answers from the command line.

The same request and the same code as ``POST /v1/query`` (a JSON file, or
flags for the common fields), run with the configured database's read-only
pool; an operator names the product, as an admin key would.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError

from labs_analytics.cli.common import database_url, load_settings
from labs_analytics.errors import AppError
from labs_analytics.read.request import QueryRequest
from labs_analytics.read.service import ReadService, create_read_pool
from labs_analytics.settings import Settings


def query(
    product: Annotated[str, typer.Option(help="Whose events.")],
    file: Annotated[
        Path | None,
        typer.Option(help="A POST /v1/query body (JSON); the flags below override its fields."),
    ] = None,
    metric: Annotated[
        list[str] | None, typer.Option(help="events, users, p95:duration_ms…; repeat.")
    ] = None,
    dimension: Annotated[
        list[str] | None, typer.Option(help="time:day, name, prop:KEY…; repeat.")
    ] = None,
    filter_: Annotated[
        list[str] | None,
        typer.Option("--filter", help='A filter as JSON: \'["is", "name", ["signup"]]\'; repeat.'),
    ] = None,
    date_range: Annotated[
        str | None, typer.Option("--range", help="7d, 30d, month, year, all, or START,END.")
    ] = None,
    timezone: Annotated[str | None, typer.Option(help="An IANA time zone.")] = None,
    limit: Annotated[int | None, typer.Option(help="Rows at most (default 100).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON answer.")] = False,
) -> None:
    """Counts, unique users and aggregates, as POST /v1/query answers them."""
    body: dict[str, Any] = _read_body(file) if file else {}
    if metric:
        body["metrics"] = metric
    body.setdefault("metrics", ["events"])
    if dimension:
        body["dimensions"] = dimension
    if filter_:
        body["filters"] = [_parse_json(text, "--filter") for text in filter_]
    if date_range:
        body["date_range"] = date_range.split(",") if "," in date_range else date_range
    if timezone:
        body["timezone"] = timezone
    if limit is not None:
        body["limit"] = limit
    try:
        request = QueryRequest.model_validate(body)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "body"
            typer.echo(f"invalid {field}: {error['msg']}", err=True)
        raise typer.Exit(2) from None
    settings = load_settings()
    database_url()
    try:
        answer = asyncio.run(_answer(settings, product, request))
    except AppError as exc:
        typer.echo(f"{exc.code}: {exc.message}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
        return
    typer.echo(_table(request, answer))


async def _answer(settings: Settings, product: str, request: QueryRequest) -> dict[str, Any]:
    pool = await create_read_pool(settings)
    try:
        return await ReadService(pool, settings).answer(product, request)
    finally:
        await pool.close()


def _read_body(path: Path) -> dict[str, Any]:
    value = _parse_json(path.read_text(), str(path))
    if not isinstance(value, dict):
        typer.echo(f"{path}: a POST /v1/query body is a JSON object", err=True)
        raise typer.Exit(2)
    return value


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        typer.echo(f"{where}: not JSON ({exc})", err=True)
        raise typer.Exit(2) from None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _table(request: QueryRequest, answer: dict[str, Any]) -> str:
    header = [*request.dimensions, *request.metrics]
    rows = [
        [_cell(value) for value in [*row["dimensions"], *row["metrics"]]]
        for row in answer["results"]
    ]
    widths = [
        min(60, max(len(header[i]), *(len(row[i]) for row in rows))) if rows else len(header[i])
        for i in range(len(header))
    ]
    numeric = len(request.dimensions)  # metric columns align right

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell[:60].rjust(width) if i >= numeric else cell[:60].ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    meta = answer["meta"]
    footer = (
        f"{len(rows)} of {meta['total_rows']} rows, {meta['source']}, {meta['took_ms']} ms, "
        f"from {meta['date_range'][0]} to {meta['date_range'][1]}"
    )
    return "\n".join([line(header), *(line(row) for row in rows), footer])
