"""`labs-analytics txlog` and `deadletters`: what the flusher did, and what it could not."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
import typer
from sqlalchemy.engine import Row

from labs_analytics.cli.common import database_url, load_settings, require, with_engine
from labs_analytics.queue.connection import create_redis
from labs_analytics.queue.entries import entry_events
from labs_analytics.queue.producer import RateLimit, StreamProducer
from labs_analytics.storage.reports import DeadLetterStore, TransactionLog

deadletters_app = typer.Typer(
    help="Events and entries the flusher could not write: list, replay, purge.",
    no_args_is_help=True,
)

# fullmatch, ASCII digits: `$` would match before a trailing newline, and `\d`
# takes any script's digits.
_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str | None) -> datetime | None:
    """``30m``, ``2h``, ``1d`` ago, or an ISO 8601 time (UTC if no offset)."""
    if value is None:
        return None
    match = _DURATION.fullmatch(value.strip())
    if match:
        try:
            return datetime.now(UTC) - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError as exc:
            raise typer.BadParameter("too far back", param_hint="--since") from exc
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter("use 30m, 2h, 1d or an ISO time", param_hint="--since") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def json_line(row: Row[Any]) -> str:
    """A row as one JSON object. Its keys are SQLAlchemy's ``quoted_name``, a str
    subclass orjson refuses as a key: plain str here."""
    return orjson.dumps({str(k): v for k, v in row._mapping.items()}, default=str).decode()


def txlog(
    failed: Annotated[bool, typer.Option("--failed", help="Only failed attempts.")] = False,
    since: Annotated[
        str | None, typer.Option(help="Only since then: 30m, 2h, 1d or an ISO time.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Show recent flush attempts from the transaction log (ingest_batches)."""
    moment = parse_since(since)
    rows = with_engine(
        database_url(),
        lambda engine: TransactionLog(engine).recent(since=moment, failed_only=failed, limit=limit),
    )
    if as_json:
        for row in rows:
            typer.echo(json_line(row))
        return
    typer.echo(
        f"{'FINISHED (UTC)':<20} {'STATUS':<10} {'BATCH':<9} {'TRY':>3} {'EVENTS':>6} "
        f"{'NEW':>6} {'DUP':>6} {'DEAD':>4} {'MS':>6}  ERROR"
    )
    for row in rows:
        r: Any = row
        typer.echo(
            f"{r.finished_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} {r.status:<10} "
            f"{str(r.batch_id)[:8]:<9} {r.attempt:>3} {r.events:>6} {r.inserted:>6} "
            f"{r.duplicates:>6} {r.dead_lettered:>4} {r.total_ms:>6}  {(r.error or '')[:80]}"
        )
    if not rows:
        typer.echo("(no batches)", err=True)


@deadletters_app.command("list")
def deadletters_list(
    limit: Annotated[int, typer.Option(min=1, help="At most this many, oldest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List dead letters with their error (the payload with --json)."""
    rows = with_engine(database_url(), lambda engine: DeadLetterStore(engine).fetch(limit=limit))
    if as_json:
        for row in rows:
            typer.echo(json_line(row))
        return
    typer.echo(f"{'ID':>6} {'CREATED (UTC)':<20} {'KIND':<6} {'STREAM ID':<18} ERROR")
    for row in rows:
        r: Any = row
        typer.echo(
            f"{r.id:>6} {r.created_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} {r.kind:<6} "
            f"{r.stream_id:<18} {r.error[:100]}"
        )
    if not rows:
        typer.echo("(no dead letters)", err=True)


@deadletters_app.command("replay")
def deadletters_replay(
    ids: Annotated[list[int] | None, typer.Argument(help="Dead letter ids; none: all.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 10_000,
) -> None:
    """Put dead letters back on the stream (after fixing their cause), then remove them.

    Each goes back as a new stream entry before its row is deleted: a crash in
    between replays it twice, which the flusher's dedup absorbs.
    """
    settings = load_settings()
    url = require(settings.database_url, "DATABASE_URL")
    require(settings.redis_url, "REDIS_URL")

    async def replay(engine: Any) -> int:
        store = DeadLetterStore(engine)
        rows = await store.fetch(limit=limit, ids=ids or [])
        redis = create_redis(settings.redis_url, timeout_seconds=settings.redis_timeout_seconds)
        producer = StreamProducer(
            redis, stream_key=settings.stream_key, backlog_key=settings.backlog_key
        )
        replayed = 0
        try:
            with typer.progressbar(rows, label="replaying", file=None) as progress:
                for row in progress:
                    r: Any = row
                    fields = {
                        k.encode(): str(v).encode() for k, v in orjson.loads(r.payload).items()
                    }
                    await producer.append_fields(
                        fields,
                        events=entry_events(fields),
                        rate_limit=RateLimit.unlimited(),
                    )
                    replayed += await store.remove([r.id])
        finally:
            await producer.aclose()
            await redis.aclose()
        return replayed

    replayed = with_engine(url, replay)
    typer.echo(f"replayed {replayed} dead letters onto {settings.stream_key}")


@deadletters_app.command("purge")
def deadletters_purge(
    before: Annotated[
        str | None, typer.Option(help="Only older than this: 7d, 12h or an ISO time.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete dead letters for good."""
    moment = parse_since(before)
    what = (
        f"dead letters created before {moment:%Y-%m-%d %H:%M:%S}" if moment else "ALL dead letters"
    )
    if not yes:
        typer.confirm(f"Delete {what}?", abort=True)
    purged = with_engine(
        database_url(), lambda engine: DeadLetterStore(engine).purge(before=moment)
    )
    typer.echo(f"purged {purged} dead letters")


__all__ = ["deadletters_app", "txlog"]
