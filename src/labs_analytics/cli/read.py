"""`labs-analytics query`, `export` and `summary`: the read API from the command line.

The same requests and the same code as ``POST /v1/query``, ``GET /v1/export``
and ``GET /v1/users/{user}/summary``, run with the configured database's
read-only pool; an operator names the product, as an admin key would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError

from labs_analytics.auth.keys import ApiKey, Scope
from labs_analytics.cli.common import database_url, load_settings
from labs_analytics.errors import AppError
from labs_analytics.read.export import ExportParams, count_statement, open_export
from labs_analytics.read.request import QueryRequest
from labs_analytics.read.service import ReadService, create_read_pool
from labs_analytics.read.summary import SummaryParams, user_summary
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


def _operator(product: str) -> ApiKey:
    """The CLI reads as an admin key of the product it names would (it has the database)."""
    return ApiKey(key_id="cli", product=product, scopes=frozenset({Scope.ADMIN}), key_hash="")


def _checked(model: type[Any], values: dict[str, Any]) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "parameters"
            typer.echo(f"invalid {field}: {error['msg']}", err=True)
        raise typer.Exit(2) from None


def export(
    product: Annotated[str, typer.Option(help="Whose events.")],
    out: Annotated[Path, typer.Option(help="The file to write (created or replaced).")],
    format_: Annotated[str, typer.Option("--format", help="csv or ndjson.")] = "csv",
    date_range: Annotated[
        str | None, typer.Option("--range", help="7d, 30d, month, year, all (default 30d).")
    ] = None,
    from_: Annotated[str | None, typer.Option("--from", help="First day or instant.")] = None,
    to: Annotated[str | None, typer.Option(help="Last day (included) or end instant.")] = None,
    timezone: Annotated[str, typer.Option(help="An IANA time zone.")] = "UTC",
    name: Annotated[list[str] | None, typer.Option(help="Only these names; repeat.")] = None,
    user: Annotated[list[str] | None, typer.Option(help="Only these users; repeat.")] = None,
    filter_: Annotated[
        list[str] | None,
        typer.Option("--filter", help='A filter as JSON: \'["gte", "prop:n", [5]]\'; repeat.'),
    ] = None,
    gzip: Annotated[bool, typer.Option(help="Write it gzip-compressed.")] = False,
) -> None:
    """Every matching event to a CSV or NDJSON file, with a progress bar, as GET /v1/export."""
    values: dict[str, Any] = {"format": format_, "timezone": timezone}
    for field, value in (("date_range", date_range), ("from", from_), ("to", to)):
        if value is not None:
            values[field] = value
    values |= {"name": name or [], "user": user or [], "filter": filter_ or []}
    params: ExportParams = _checked(ExportParams, values)
    settings = load_settings()
    database_url()
    try:
        rows = asyncio.run(_export(settings, product, params, out, gzip=gzip))
    except AppError as exc:
        typer.echo(f"{exc.code}: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {rows:,} events to {out}", err=True)


async def _export(
    settings: Settings, product: str, params: ExportParams, out: Path, *, gzip: bool
) -> int:
    now = dt.datetime.now(dt.UTC)
    pool = await create_read_pool(settings)
    try:
        reads = ReadService(pool, settings)
        sql, args = count_statement(product, params.interval(now), params.filters())
        ((expected,),) = await reads.fetch(sql, args)
        export = await open_export(
            reads, _operator(product), params, gzip=gzip, max_running=1, now=now
        )
        try:
            with (
                await asyncio.to_thread(out.open, "wb") as file,
                typer.progressbar(length=expected, label="exporting", file=sys.stderr) as bar,
            ):
                done = 0
                async for chunk in export:
                    await asyncio.to_thread(file.write, chunk)
                    bar.update(min(export.rows, expected) - done)
                    done = min(export.rows, expected)
        finally:
            await export.aclose()
        return export.rows
    finally:
        await pool.close()


def summary(
    user: Annotated[str, typer.Argument(help="The user id, as events carry it.")],
    product: Annotated[str, typer.Option(help="Whose events.")],
    from_: Annotated[str | None, typer.Option("--from", help="First day (YYYY-MM-DD).")] = None,
    to: Annotated[str | None, typer.Option(help="Last day, included (YYYY-MM-DD).")] = None,
    timezone: Annotated[str, typer.Option(help="An IANA time zone.")] = "UTC",
    top: Annotated[
        list[str] | None, typer.Option(help="prop:KEY whose top values to list; repeat.")
    ] = None,
) -> None:
    """A user's summary (default: this calendar year), as GET /v1/users/{user}/summary."""
    values: dict[str, Any] = {"timezone": timezone, "top": top or []}
    for field, value in (("from", from_), ("to", to)):
        if value is not None:
            values[field] = value
    params: SummaryParams = _checked(SummaryParams, values)
    settings = load_settings()
    database_url()
    try:
        answer = asyncio.run(_summary(settings, product, user, params))
    except AppError as exc:
        typer.echo(f"{exc.code}: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())


async def _summary(
    settings: Settings, product: str, user: str, params: SummaryParams
) -> dict[str, Any]:
    pool = await create_read_pool(settings)
    try:
        reads = ReadService(pool, settings)
        return await user_summary(reads, _operator(product), user, params, dt.datetime.now(dt.UTC))
    finally:
        await pool.close()
