"""Read a request's body, validate its events, bind them to the caller's product, queue them.

All or nothing per request: if any event is invalid, none is queued, and the
error names the invalid events by index and field (the first
``MAX_LISTED_PROBLEMS`` problems in detail, then the totals: see
``ingest.problems``).

Every request may be hostile (ingest keys ship in browsers), so refusing is
kept cheap and is paid for: a key known to be rate limited is refused before
its body is read, and refused work is charged to the key's rate limit (see
``ingest.limits``).
"""

from __future__ import annotations

import heapq
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.types import Receive

from labs_analytics.auth.keys import ApiKey
from labs_analytics.errors import (
    Forbidden,
    InvalidEvents,
    MalformedBody,
    PayloadTooLarge,
    QueueError,
    QueueUnavailable,
    RateLimitExceeded,
    UnsupportedEncoding,
)
from labs_analytics.events import (
    EVENT_LIST_ADAPTER,
    EventBatchIn,
    EventIn,
    EventLimits,
    EventRecord,
    Timestamp,
    correct_clock_skew,
    may_hold_large_integers,
    out_of_range_integers,
    to_record,
)
from labs_analytics.ingest.body import IngestHeaders, read_body
from labs_analytics.ingest.limits import LimitedKeys, RequestMeter
from labs_analytics.ingest.problems import (
    MAX_LISTED_PROBLEMS,
    Problems,
    event_problems,
    few_fields,
)
from labs_analytics.logs import get_logger
from labs_analytics.queue.producer import (
    AppendRefused,
    InvalidRateLimit,
    RateLimit,
    RateLimited,
    retry_after,
)
from labs_analytics.queue.service import EventQueue, Overloaded, QueueDown
from labs_analytics.settings import Settings

log = get_logger(__name__)

SENT_AT_ADAPTER: TypeAdapter[datetime] = TypeAdapter(Timestamp)
_ENVELOPE_FIELDS = frozenset(EventBatchIn.model_fields)

# What a request can be refused for once its key is known, and is charged for.
_REFUSED_WORK = (MalformedBody, PayloadTooLarge, UnsupportedEncoding, InvalidEvents, Forbidden)


class IngestService:
    def __init__(self, queue: EventQueue, settings: Settings) -> None:
        self._queue = queue
        self._max_events = settings.max_events_per_request
        self._max_body_bytes = settings.max_body_bytes
        self._retry_after = settings.retry_after_seconds
        self._default_rate = settings.rate_limit_events_per_second
        self._burst_seconds = settings.rate_limit_burst_seconds
        self._rate_key = settings.rate_limit_key
        self._rate_limits: dict[float | None, RateLimit] = {}
        self.limited_keys = LimitedKeys()
        self._context = {
            "limits": EventLimits(
                max_properties_bytes=settings.max_properties_bytes,
                max_future_skew=timedelta(seconds=settings.max_future_skew_seconds),
                max_clock_skew=timedelta(seconds=settings.clock_skew_max_seconds),
            )
        }

    @property
    def limits(self) -> EventLimits:
        """The deployment's event limits (properties size, clock skew)."""
        limits: EventLimits = self._context["limits"]
        return limits

    @property
    def max_events_per_append(self) -> int:
        """The most events one append may hold (a larger request is queued in parts)."""
        return self._max_events

    # --- a request ----------------------------------------------------------------

    async def accept(
        self, key: ApiKey, headers: IngestHeaders, receive: Receive
    ) -> list[uuid.UUID]:
        """Read, validate and queue one request of an authorized key; the event ids, in order."""
        left = self.limited_keys.seconds_left(key.key_id)
        if left is not None:
            # Not a byte of the body is read: the server drains or closes it.
            refusal = self.rate_limited(key, left)
            # And the connection is closed: its body is not worth receiving
            # (a flood of refused bodies cost the other clients more when drained).
            refusal.headers["Connection"] = "close"
            raise refusal
        meter = RequestMeter()
        try:
            raw = await read_body(receive, headers, limit=self._max_body_bytes, meter=meter)
            records = self.parse(raw, key, meter=meter)
        except _REFUSED_WORK:
            await self.charge_refused_work(key, meter)
            raise
        return await self.enqueue(records, key)

    def parse(
        self, raw: bytes, key: ApiKey, *, meter: RequestMeter | None = None
    ) -> list[EventRecord]:
        """The records of a request body, or the ``AppError`` that refuses it."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedBody(f"body is not valid JSON: {exc}") from exc

        items, sent_at = self._items(data)
        if meter is not None:
            meter.events = len(items)
        if len(items) > self._max_events:
            raise PayloadTooLarge(
                f"batch of {len(items)} events exceeds the limit of {self._max_events}"
            )
        if may_hold_large_integers(raw):
            self._refuse_large_integers(raw, is_batch="events" in data, events=len(items))
        events = self._validate(items)
        foreign = [i for i, event in enumerate(events) if event.product not in (None, key.product)]
        if foreign:
            problems = Problems()
            for index in foreign:
                problems.invalid_indexes.append(index)
                problems.add(index, "product", "must equal the key's product", "product_mismatch")
            raise Forbidden(
                "events name a product this key does not belong to", details=problems.details()
            )
        received_at = datetime.now(UTC)
        product = key.product
        records = [to_record(event, product=product, received_at=received_at) for event in events]
        if sent_at is not None:
            correct_clock_skew(records, sent_at, self.limits.max_clock_skew)
        return records

    async def enqueue(self, records: list[EventRecord], key: ApiKey) -> list[uuid.UUID]:
        """Queue validated records under the key's rate limit; their ids."""
        rate_limit = self.rate_limit_for(key)
        try:
            await self._queue.append(
                records, rate_limit=rate_limit, rate_key=self._rate_key(key.key_id)
            )
        except RateLimited as exc:
            self.limited_keys.limit(key.key_id, exc.retry_after_seconds)
            raise self.rate_limited(key, exc.retry_after_seconds) from exc
        except Overloaded as exc:
            raise QueueUnavailable(
                f"ingest is over capacity ({exc}); retry later",
                retry_after_seconds=self._retry_after,
                code="overloaded",
            ) from exc
        except QueueDown as exc:
            # Nothing is acknowledged that is not durable: the client retries.
            raise QueueUnavailable(
                "the event queue is unavailable; retry later",
                retry_after_seconds=self._retry_after,
            ) from exc
        except AppendRefused as exc:
            # This request's own failure, not an outage: logged, never spooled.
            log.error(
                "ingest.append_refused", key_id=key.key_id, events=len(records), error=str(exc)
            )
            raise QueueError(
                "the queue refused these events with an internal error; nothing was accepted"
            ) from exc
        except InvalidRateLimit as exc:
            log.error("ingest.invalid_rate_limit", key_id=key.key_id, error=str(exc))
            raise QueueError(
                "this key's rate limit is misconfigured; nothing was accepted"
            ) from exc
        return [record.event_id for record in records]

    # --- rate limits ----------------------------------------------------------------

    def rate_limit_for(self, key: ApiKey) -> RateLimit:
        # One RateLimit per distinct rate, made once: this runs on every request.
        limit = self._rate_limits.get(key.rate_limit_per_second)
        if limit is None:
            rate = key.rate_limit_per_second
            if rate is None:
                rate = self._default_rate
            if rate == 0:
                limit = RateLimit.unlimited()
            else:
                # A bucket smaller than the largest request would refuse it forever.
                # (A rate the bucket cannot use is refused by the producer.)
                limit = RateLimit(rate, max(rate * self._burst_seconds, float(self._max_events)))
            self._rate_limits[key.rate_limit_per_second] = limit
        return limit

    async def charge_refused_work(self, key: ApiKey, meter: RequestMeter) -> None:
        rate_limit = self.rate_limit_for(key)
        try:
            left = await self._queue.debit(
                self._rate_key(key.key_id), meter.rejected_cost(), rate_limit
            )
        except InvalidRateLimit:
            return  # its next valid request says so
        if left is not None and left < 1:
            # Refused until the bucket holds a token again.
            self.limited_keys.limit(key.key_id, (1 - left) / rate_limit.events_per_second)

    def rate_limited(self, key: ApiKey, seconds: float) -> RateLimitExceeded:
        rate = self.rate_limit_for(key).events_per_second
        return RateLimitExceeded(
            f"this key may send {rate:g} events/s (refused requests count against it too); "
            f"retry in {seconds:.1f} s",
            retry_after_seconds=retry_after(seconds),
            limit_per_second=rate,
        )

    # --- validation -------------------------------------------------------------------

    def _items(self, data: Any) -> tuple[list[Any], datetime | None]:
        """The events of a body (the batch's list, or the one event it is) and
        the batch's ``sent_at``, if it has one."""
        if not isinstance(data, dict):
            raise InvalidEvents(
                'body must be a JSON object: one event, or {"events": [...]}',
                details=[
                    {
                        "index": None,
                        "field": None,
                        "message": "expected a JSON object",
                        "type": "model_type",
                    }
                ],
            )
        if "events" not in data:
            return [data], None
        sent_at = self._check_envelope(data)
        items: list[Any] = data["events"]
        return items, sent_at

    def _check_envelope(self, data: dict[str, Any]) -> datetime | None:
        """The batch's ``sent_at`` once every envelope field checks out."""
        problems = Problems()
        unknown = [name for name in data if name not in _ENVELOPE_FIELDS]
        # Sorted, but only as far as they are listed: there may be a hundred thousand.
        for name in heapq.nsmallest(MAX_LISTED_PROBLEMS, unknown):
            problems.add(None, name, "unknown field", "extra_forbidden")
        problems.count += max(0, len(unknown) - MAX_LISTED_PROBLEMS)
        events = data["events"]
        if not isinstance(events, list) or not events:
            problems.add(
                None, "events", f"must be a list of 1 to {self._max_events} events", "list_type"
            )
        sent_at = None
        if data.get("sent_at") is not None:
            try:
                sent_at = SENT_AT_ADAPTER.validate_python(data["sent_at"], context=self._context)
            except ValidationError as exc:
                for error in exc.errors(include_url=False, include_input=False):
                    problems.add(None, "sent_at", error["msg"], error["type"])
        if problems.count:
            raise InvalidEvents(
                "invalid batch envelope; nothing was accepted", details=problems.details()
            )
        return sent_at

    def _refuse_large_integers(self, raw: bytes, *, is_batch: bool, events: int) -> None:
        found = out_of_range_integers(raw)
        if not found:
            return
        problems = Problems()
        for integer in found:
            path = list(integer.path)
            index: int | None = 0
            if is_batch:
                index = None
                if len(path) > 1 and path[0] == "events" and isinstance(path[1], int):
                    index = path[1]
                    path = path[2:]
            if index is not None and index not in problems.invalid_indexes[-1:]:
                problems.invalid_indexes.append(index)  # in document order: each index once
            field = ".".join(str(part) for part in path) or None
            problems.add(index, field, integer.describe(), "int_out_of_range")
        message = (
            problems.summary(events)
            if problems.invalid_indexes
            else "invalid batch envelope; nothing was accepted"
        )
        raise InvalidEvents(message, details=problems.details())

    def _validate(self, items: list[Any]) -> list[EventIn]:
        for _ in range(2):
            if few_fields(items):
                try:
                    return EVENT_LIST_ADAPTER.validate_python(items, context=self._context)
                except ValidationError:
                    pass
            # Only now, event by event: attributing every error of a hostile body
            # through the whole list's errors() cost 20x the validation itself.
            problems = event_problems(items, self._context)
            if problems.count:
                raise InvalidEvents(problems.summary(len(items)), details=problems.details())
            # None found: an event at the edge of the future-skew limit moved
            # inside it between the two passes. Validate the whole list again.
        raise InvalidEvents("the events could not be validated; retry", details=[])
