"""The wire contract's limits and patterns: the one source for the server and the SDK.

Standard library only, so the SDK (httpx alone) and the server
(``labs_analytics.events``, ``labs_analytics.settings``) import the same
values instead of keeping copies in step. The server's settings may lower or
raise the per-deployment limits (``MAX_BODY_BYTES`` and the rest are their
defaults); the SDK checks against these defaults at ``track()`` time, so that
one bad event never turns a whole batch into a 422.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

# An event's name: letters, digits and ``_ . : / -``, 1 to 128 of them.
EVENT_NAME_PATTERN: Final = r"^[A-Za-z0-9_.:/\-]{1,128}$"
# A product's name (keys, rows): lower case, as a slug.
PRODUCT_PATTERN: Final = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
MAX_USER_LENGTH: Final = 256
# Objects and arrays nested at most this deep, in properties and in context.
MAX_JSON_DEPTH: Final = 32

# Per-deployment limits: the server's defaults.
MAX_PROPERTIES_BYTES: Final = 32 * 1024  # properties, and context, serialized
MAX_FUTURE_SKEW_SECONDS: Final = 24 * 3600
MAX_EVENTS_PER_REQUEST: Final = 1000
MAX_BODY_BYTES: Final = 1024 * 1024  # after decompression

# JSON integers must lie in [-2^63, 2^64 - 1], the signed and unsigned 64-bit
# range: orjson, which the server parses bodies with, would turn a larger
# literal into a float (18446744073709551616 stored as 18446744073709552000),
# so one is refused. Send larger numbers as strings.
MIN_JSON_INT: Final = -(2**63)
MAX_JSON_INT: Final = 2**64 - 1

# Timestamps: one of
#   - a JSON number of unix seconds (fraction allowed), never milliseconds;
#   - a string of decimal unix seconds matching UNIX_SECONDS_PATTERN;
#   - an RFC 3339 date-time string matching RFC3339_PATTERN: YYYY-MM-DD, `T`
#     or a space, HH:MM:SS, an optional fraction (digits past microseconds are
#     dropped), and `Z` or ±HH:MM; without an offset it is taken as UTC.
# Anything else is refused (no ISO 8601 week dates, no compact forms, no
# milliseconds read from large numbers), and so is any time before
# EARLIEST_TIMESTAMP or more than MAX_FUTURE_SKEW_SECONDS ahead of now.
UNIX_SECONDS_PATTERN: Final = r"-?[0-9]+(\.[0-9]+)?"
RFC3339_PATTERN: Final = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})?"
)
EARLIEST_TIMESTAMP: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
