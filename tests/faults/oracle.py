"""The fault-injection oracle: drive real load, remember every promise, check it was kept.

``LoadGenerator`` posts batches of events to real `labs-analytics serve`
processes over HTTP, from a few concurrent posters, paced (``rate`` requests
per second) and bounded (``duration`` seconds, ``max_requests``): it always
stops by itself. Every event has a fresh uuid4 ``event_id`` and properties
``{"payload": <random text>, "sha": sha256(payload), "seq": n}``.

``Oracle`` records what the API answered. An event becomes an *obligation*
only when its request got a 202; requests refused (any other status, or a
transport error: the server died, the connection broke) are recorded apart,
with the reason. A refused event may still be stored (the API may have queued
it and died before answering); it is reported, never required.

``Oracle.check(db, redis, settings, api_url=...)``, once the fault has healed:

1. waits until the stream is drained (XLEN 0, nothing pending in the group);
2. compares ``events`` with the obligations: **lost** (acknowledged, not
   stored under the oracle's product), **duplicated** (stored more than once
   for one product: identity is per product), **unexpected** (stored, never
   sent), **corrupted** (payload does not match its hash, the sent payload,
   or the sent timestamp and product: a sent id stored under another product
   counts here): all must be 0;
3. posts one fresh event now and requires it to land (``fresh_timeout``
   only bounds a hang): the pipeline is not only consistent but alive.

A failure raises ``AssertionError`` with every count and a few example ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
from redis.asyncio import Redis

from labs_analytics.settings import Settings, to_asyncpg_dsn
from tests.helpers import stream_state

EVENT_NAME = "fault.probe"
EXAMPLES = 5


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SentEvent:
    event_id: str
    timestamp: str
    payload: str

    def body(self, seq: int) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "name": EVENT_NAME,
            "user": "u_load",
            "timestamp": self.timestamp,
            "properties": {"payload": self.payload, "sha": sha256_hex(self.payload), "seq": seq},
        }


def random_payload(size: int) -> str:
    # Hex plus a few multi-byte characters, so an encoding slip (COPY, JSON)
    # would change the bytes and break the hash.
    return os.urandom(max(1, size // 2)).hex() + "-ünï✓"


@dataclass
class Report:
    sent: int
    acknowledged: int
    refused: int
    refusal_reasons: dict[str, int]
    stored_rows: int
    lost: list[str]
    duplicated: list[str]
    unexpected: list[str]
    corrupted: list[str]
    refused_but_stored: int
    stream_length: int | None
    pending: int | None
    drained: bool
    anomalies: list[str]
    batches: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.drained and not (
            self.lost or self.duplicated or self.unexpected or self.corrupted or self.anomalies
        )

    def describe(self) -> str:
        def examples(ids: list[str]) -> str:
            return f"{len(ids)}" + (f" (e.g. {', '.join(ids[:EXAMPLES])})" if ids else "")

        return "\n".join(
            [
                "fault oracle:",
                f"  sent {self.sent} events: {self.acknowledged} acknowledged (202), "
                f"{self.refused} refused {self.refusal_reasons or ''}",
                f"  stored rows {self.stored_rows}; refused but stored anyway "
                f"{self.refused_but_stored} (allowed)",
                f"  lost        {examples(self.lost)}",
                f"  duplicated  {examples(self.duplicated)}",
                f"  unexpected  {examples(self.unexpected)}",
                f"  corrupted   {examples(self.corrupted)}",
                f"  stream      length {self.stream_length}, pending {self.pending}"
                + ("" if self.drained else "  <- NOT DRAINED"),
                f"  batches     {self.batches}",
                f"  anomalies   {self.anomalies[:EXAMPLES] or 'none'}",
            ]
        )


@dataclass
class Oracle:
    key: str
    product: str = "faults"
    acknowledged: dict[str, SentEvent] = field(default_factory=dict)
    refused: dict[str, SentEvent] = field(default_factory=dict)
    refusal_reasons: Counter[str] = field(default_factory=Counter)
    anomalies: list[str] = field(default_factory=list)
    requests: int = 0
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def new_events(self, n: int, *, payload_bytes: int = 64) -> list[SentEvent]:
        now = datetime.now(UTC).isoformat()
        return [SentEvent(str(uuid.uuid4()), now, random_payload(payload_bytes)) for _ in range(n)]

    def request_body(self, events: Sequence[SentEvent]) -> bytes:
        return orjson.dumps({"events": [e.body(next(self._seq)) for e in events]})

    async def post(
        self, client: httpx.AsyncClient, base_url: str, events: Sequence[SentEvent]
    ) -> int | None:
        """Post one request; record its events as acknowledged or refused; return the status."""
        self.requests += 1
        try:
            response = await client.post(
                f"{base_url}/v1/events",
                content=self.request_body(events),
                headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
            )
        except httpx.TransportError as exc:
            self._refuse(events, type(exc).__name__)
            return None
        if response.status_code != 202:
            self._refuse(events, str(response.status_code))
            return response.status_code
        ids = [e.event_id for e in events]
        try:
            answered = response.json()["ids"]
        except (ValueError, KeyError, TypeError):
            answered = None
        if answered != ids:
            self.anomalies.append(f"202 with ids {str(answered)[:80]} for {ids[:2]}…")
        for event in events:
            self.acknowledged[event.event_id] = event
        return 202

    def _refuse(self, events: Sequence[SentEvent], reason: str) -> None:
        self.refusal_reasons[reason] += 1
        for event in events:
            self.refused[event.event_id] = event

    @property
    def acknowledged_count(self) -> int:
        return len(self.acknowledged)

    async def check(
        self,
        db: asyncpg.Connection,
        redis: Redis,
        settings: Settings,
        *,
        api_url: str,
        drain_timeout: float = 60.0,
        fresh_timeout: float = 30.0,  # only bounds a hang: "alive", not "fast"
    ) -> Report:
        """Drain, compare, probe; raise AssertionError with the report unless all is well."""
        drained, length, pending = await wait_until_drained(redis, settings, timeout=drain_timeout)
        report = await self.compare(db, drained=drained, length=length, pending=pending)
        print(report.describe())  # captured: shown when a test fails later on
        assert report.ok, report.describe()
        await self.probe(db, api_url, timeout=fresh_timeout)
        return report

    async def compare(
        self, db: asyncpg.Connection, *, drained: bool, length: int | None, pending: int | None
    ) -> Report:
        rows = await db.fetch(
            "SELECT event_id::text AS id, timestamp, product, properties::text AS properties "
            "FROM events"
        )
        # An event's identity includes its product: count per (product, id),
        # and only rows of our product keep our promises.
        counts = Counter((row["product"], row["id"]) for row in rows)
        ours = {row["id"] for row in rows if row["product"] == self.product}
        sent = {**self.refused, **self.acknowledged}
        corrupted: list[str] = []
        for row in rows:
            event = sent.get(row["id"])
            if event is None:
                continue
            properties = orjson.loads(row["properties"])
            payload = properties.get("payload")
            if (
                payload != event.payload
                or properties.get("sha") != sha256_hex(payload or "")
                or row["timestamp"] != datetime.fromisoformat(event.timestamp)
                or row["product"] != self.product
            ):
                corrupted.append(row["id"])
        batches = await db.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'committed') AS committed, "
            "count(*) FILTER (WHERE status <> 'committed') AS failed, "
            "coalesce(sum(inserted), 0) AS inserted, coalesce(sum(duplicates), 0) AS duplicates "
            "FROM ingest_batches"
        )
        return Report(
            sent=len(sent),
            acknowledged=len(self.acknowledged),
            refused=len(self.refused),
            refusal_reasons=dict(self.refusal_reasons),
            stored_rows=len(rows),
            lost=[i for i in self.acknowledged if i not in ours],
            duplicated=[i for (_product, i), n in counts.items() if n > 1],
            unexpected=[i for _product, i in counts if i not in sent],
            corrupted=corrupted,
            refused_but_stored=sum(1 for i in self.refused if i in ours),
            stream_length=length,
            pending=pending,
            drained=drained,
            anomalies=list(self.anomalies),
            batches={k: int(v) for k, v in dict(batches or {}).items()},
        )

    async def probe(
        self,
        db: asyncpg.Connection,
        api_url: str,
        *,
        timeout: float,  # noqa: ASYNC109 - how long the fresh event may take: the check's own
    ) -> None:
        """A fresh event, posted now, lands within ``timeout`` seconds."""
        fresh = self.new_events(1)
        async with httpx.AsyncClient(timeout=10) as client:
            status = await self.post(client, api_url, fresh)
        assert status == 202, f"a fresh event after the fault was refused: {status}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await db.fetchval(
                "SELECT count(*) FROM events WHERE product = $1 AND event_id = $2",
                self.product,
                uuid.UUID(fresh[0].event_id),
            ):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"a fresh event posted after the fault did not land in {timeout} s")


async def connect(settings: Settings) -> asyncpg.Connection:
    """A new assertion connection (the test's own dies when PostgreSQL is restarted)."""
    return await asyncpg.connect(to_asyncpg_dsn(settings.database_url))


async def wait_until_drained(
    redis: Redis,
    settings: Settings,
    *,
    timeout: float,  # noqa: ASYNC109 - not drained by then is a finding, reported, not raised
) -> tuple[bool, int | None, int | None]:
    """Wait until XLEN is 0 and nothing is pending; (drained, length, pending)."""
    deadline = time.monotonic() + timeout
    length: int | None = None
    pending: int | None = None
    while True:
        with contextlib.suppress(OSError, ConnectionError):
            length, pending = await stream_state(redis, settings)
            if length == 0 and not pending:
                return True, length, pending
        if time.monotonic() > deadline:
            return False, length, pending
        await asyncio.sleep(0.1)


@dataclass
class LoadGenerator:
    """Paced, bounded load: ``rate`` requests/s (None: as fast as possible) of
    ``events_per_request`` events, from ``concurrency`` posters, until
    ``duration`` seconds or ``max_requests`` requests, or ``stop()``."""

    oracle: Oracle
    base_urls: Sequence[str]
    rate: float | None = 20.0
    duration: float = 10.0
    max_requests: int | None = None
    events_per_request: int = 10
    payload_bytes: int = 64
    concurrency: int = 4
    timeout: float = 10.0
    statuses: Counter[int | None] = field(default_factory=Counter)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> LoadGenerator:
        self._task = asyncio.create_task(self.run())
        return self

    async def __aenter__(self) -> LoadGenerator:
        """``async with LoadGenerator(...) as load``: runs in the background, and
        is stopped on the way out even when the test fails inside."""
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        await self.wait()

    async def wait(self) -> None:
        if self._task is not None:
            await self._task

    async def run(self) -> None:
        tickets = itertools.count()
        started = time.monotonic()
        deadline = started + self.duration
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits) as client:

            async def poster() -> None:
                while not self._stop.is_set():
                    ticket = next(tickets)
                    if self.max_requests is not None and ticket >= self.max_requests:
                        return
                    if self.rate is not None:
                        due = started + ticket / self.rate
                        if due > deadline:
                            return
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._stop.wait(), due - time.monotonic())
                            return  # stopped while waiting for our turn
                    elif time.monotonic() > deadline:
                        return
                    base_url = self.base_urls[ticket % len(self.base_urls)]
                    events = self.oracle.new_events(
                        self.events_per_request, payload_bytes=self.payload_bytes
                    )
                    self.statuses[await self.oracle.post(client, base_url, events)] += 1

            await asyncio.gather(*(poster() for _ in range(self.concurrency)))

    async def wait_for_acknowledged(
        self,
        events: int,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 - the poll's own deadline, this helper's API
    ) -> None:
        deadline = time.monotonic() + timeout
        while self.oracle.acknowledged_count < events:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {self.oracle.acknowledged_count} of {events} events acknowledged "
                    f"in {timeout} s; statuses {dict(self.statuses)}"
                )
            await asyncio.sleep(0.01)
