"""Validate a request's events, bind them to the caller's product, queue them.

All or nothing per request: if any event is invalid, none is queued, and the
error names every invalid event by index and field.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from labs_analytics.auth.keys import ApiKey
from labs_analytics.errors import (
    Forbidden,
    InvalidEvents,
    MalformedBody,
    PayloadTooLarge,
    QueueUnavailable,
    RateLimitExceeded,
)
from labs_analytics.events import (
    EVENT_LIST_ADAPTER,
    EventBatchIn,
    EventIn,
    EventLimits,
    EventRecord,
    Timestamp,
    to_record,
)
from labs_analytics.queue.producer import RateLimit, RateLimited, retry_after
from labs_analytics.queue.service import EventQueue, Overloaded, QueueDown
from labs_analytics.settings import Settings

SENT_AT_ADAPTER: TypeAdapter[datetime] = TypeAdapter(Timestamp)


def _error_details(exc: ValidationError) -> list[dict[str, Any]]:
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = list(error["loc"])
        index = loc.pop(0) if loc and isinstance(loc[0], int) else None
        details.append(
            {
                "index": index,
                "field": ".".join(str(part) for part in loc) or None,
                "message": error["msg"],
                "type": error["type"],
            }
        )
    return details


class IngestService:
    def __init__(self, queue: EventQueue, settings: Settings) -> None:
        self._queue = queue
        self._max_events = settings.max_events_per_request
        self._retry_after = settings.retry_after_seconds
        self._default_rate = settings.rate_limit_events_per_second
        self._burst_seconds = settings.rate_limit_burst_seconds
        self._rate_key = settings.rate_limit_key
        self._rate_limits: dict[float | None, RateLimit] = {}
        self._context = {
            "limits": EventLimits(
                max_properties_bytes=settings.max_properties_bytes,
                max_future_skew=timedelta(seconds=settings.max_future_skew_seconds),
            )
        }

    def parse(self, raw: bytes, key: ApiKey) -> list[EventRecord]:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedBody(f"body is not valid JSON: {exc}") from exc

        events = self._validate(data)
        foreign = [i for i, event in enumerate(events) if event.product not in (None, key.product)]
        if foreign:
            raise Forbidden(
                "events name a product this key does not belong to",
                details=[
                    {"index": i, "field": "product", "message": "must equal the key's product"}
                    for i in foreign
                ],
            )
        received_at = datetime.now(UTC)
        return [to_record(event, product=key.product, received_at=received_at) for event in events]

    async def accept(self, raw: bytes, key: ApiKey) -> list[uuid.UUID]:
        """Validate and queue a request body; return the event ids, in order."""
        records = self.parse(raw, key)
        rate_limit = self.rate_limit_for(key)
        try:
            await self._queue.append(
                records, rate_limit=rate_limit, rate_key=self._rate_key(key.key_id)
            )
        except RateLimited as exc:
            raise RateLimitExceeded(
                f"this key may send {rate_limit.events_per_second:g} events/s; "
                f"retry in {exc.retry_after_seconds:.1f} s",
                retry_after_seconds=retry_after(exc.retry_after_seconds),
                limit_per_second=rate_limit.events_per_second,
            ) from exc
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
        return [record.event_id for record in records]

    def rate_limit_for(self, key: ApiKey) -> RateLimit:
        # One RateLimit per distinct rate, made once: this runs on every request.
        limit = self._rate_limits.get(key.rate_limit_per_second)
        if limit is None:
            rate = key.rate_limit_per_second
            if rate is None:
                rate = self._default_rate
            if rate <= 0:
                limit = RateLimit.unlimited()
            else:
                # A bucket smaller than the largest request would refuse it forever.
                limit = RateLimit(rate, max(rate * self._burst_seconds, float(self._max_events)))
            self._rate_limits[key.rate_limit_per_second] = limit
        return limit

    def _check_envelope(self, data: dict[str, Any]) -> None:
        problems = [
            {"index": None, "field": name, "message": "unknown field", "type": "extra_forbidden"}
            for name in sorted(set(data) - set(EventBatchIn.model_fields))
        ]
        events = data["events"]
        if not isinstance(events, list) or not events:
            problems.append(
                {
                    "index": None,
                    "field": "events",
                    "type": "list_type",
                    "message": f"must be a list of 1 to {self._max_events} events",
                }
            )
        if data.get("sent_at") is not None:
            try:
                SENT_AT_ADAPTER.validate_python(data["sent_at"])
            except ValidationError as exc:
                problems += [{**d, "index": None, "field": "sent_at"} for d in _error_details(exc)]
        if problems:
            raise InvalidEvents("invalid batch envelope; nothing was accepted", details=problems)

    def _validate(self, data: Any) -> list[EventIn]:
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
            items: list[Any] = [data]
        else:
            items = data["events"]
            self._check_envelope(data)
            if len(items) > self._max_events:
                raise PayloadTooLarge(
                    f"batch of {len(items)} events exceeds the limit of {self._max_events}"
                )
        try:
            return EVENT_LIST_ADAPTER.validate_python(items, context=self._context)
        except ValidationError as exc:
            details = _error_details(exc)
            invalid = len({d["index"] for d in details})
            raise InvalidEvents(
                f"{invalid} of {len(items)} events are invalid; nothing was accepted",
                details=details,
            ) from exc
