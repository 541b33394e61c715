"""The Penn Labs legacy analytics API's body, mapped onto our events.

What django-labs-accounts' analytics client sends to ``POST /analytics/``::

    {"product": 10, "pennkey": "bfranklin", "timestamp": 1764547200.25,
     "data": [{"key": "club.view", "value": "penn-labs"}, ...]}

Each ``{key, value}`` becomes one event of the product the number names
(``LEGACY_PRODUCTS``): ``name`` is the key as sent (free text, at most 1,024
characters), ``user`` the pennkey, ``timestamp`` the request's, and
``properties`` ``{"value": <the value as text>}`` (a value that is not a
string — the client can send raw numbers, booleans, objects — is stored as
its JSON text rather than refused). ``context.$legacy`` keeps the product
number and the token's subject.

**The same event.** The legacy engine keyed records by a hash of the whole
request and of each item, so identical re-sends collapsed into one record —
and so did two identical items inside one request, separate actions though
they were. Here an item's ``event_id`` is a UUIDv5 of the token's subject, the
product, the pennkey, the timestamp (to the microsecond), the key, the value
and how many identical items precede it in its request. So a request sent
again is stored once; two identical items of one request are two events; two
requests that agree in all of it (same subject, product, user, timestamp to
the microsecond, key and value) are taken for one request sent twice.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from labs_analytics.errors import InvalidEvents, MalformedBody
from labs_analytics.events import EventLimits, EventRecord, Timestamp, UserId, no_nul, uuid5

LEGACY_PRODUCTS = {
    0: "other",
    1: "mobile_ios",
    2: "mobile_android",
    3: "mobile_backend",
    4: "portal",
    5: "pcr",
    6: "pdp",
    7: "pca",
    8: "pcp",
    9: "ohq",
    10: "clubs",
}
MAX_ITEMS = 1000
MAX_KEY_CHARS = 1024
MAX_VALUE_BYTES = 32 * 1024
RESERVED_CONTEXT_KEY = "$legacy"
ANSWER = b'{"message":"Data stored successfully!"}'
# Fixed forever: changing it would store re-sends of old requests again.
LEGACY_NAMESPACE = uuid.UUID("0b7d5c38-6f0e-4c1e-9a39-41d7c0f5e2a4")

ItemKey = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_KEY_CHARS), AfterValidator(no_nul)
]


class LegacyItem(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    key: ItemKey
    value: Any = None


class LegacyBody(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    product: int = Field(ge=0, le=max(LEGACY_PRODUCTS), strict=True)
    pennkey: UserId | None = None
    timestamp: Timestamp
    data: list[LegacyItem] = Field(min_length=1, max_length=MAX_ITEMS)


def parse_body(raw: bytes, limits: EventLimits) -> LegacyBody:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"body is not valid JSON: {exc}") from exc
    try:
        return LegacyBody.model_validate(data, context={"limits": limits})
    except ValidationError as exc:
        details = [
            {
                "field": ".".join(str(part) for part in error["loc"]) or None,
                "message": error["msg"],
                "type": error["type"],
            }
            for error in exc.errors(include_url=False, include_input=False)[:20]
        ]
        raise InvalidEvents(
            "the analytics body is invalid; nothing was stored", details=details
        ) from None


def value_text(value: Any) -> str:
    """An item's value as stored: a string as is, anything else as its JSON text."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:  # an integer beyond 64 bits: keep its digits
            text = str(value)
    return text


def product_of(body: LegacyBody) -> str:
    """Our name for the legacy product number the body carries."""
    return LEGACY_PRODUCTS[body.product]


def to_records(body: LegacyBody, *, subject: str, received_at: datetime) -> list[EventRecord]:
    """An event per item, in the product the body names (see the module's docstring)."""
    product = product_of(body)
    moment = body.timestamp.isoformat(timespec="microseconds")
    seen: Counter[tuple[str, str]] = Counter()
    records = []
    problems = []
    for index, item in enumerate(body.data):
        text = value_text(item.value)
        if "\x00" in text or len(text.encode()) > MAX_VALUE_BYTES:
            problems.append(
                {
                    "field": f"data.{index}.value",
                    "message": f"at most {MAX_VALUE_BYTES} bytes, without NUL characters",
                    "type": "value_error",
                }
            )
            continue
        occurrence = seen[(item.key, text)]
        seen[(item.key, text)] += 1
        identity = "\n".join(
            (subject, product, body.pennkey or "", moment, item.key, text, str(occurrence))
        )
        records.append(
            EventRecord(
                event_id=uuid5(LEGACY_NAMESPACE, identity),
                product=product,
                name=item.key,
                user=body.pennkey,
                timestamp=body.timestamp,
                properties={"value": text},
                context={RESERVED_CONTEXT_KEY: {"product": body.product, "subject": subject}},
                received_at=received_at,
            )
        )
    if problems:
        raise InvalidEvents("the analytics body is invalid; nothing was stored", details=problems)
    return records
