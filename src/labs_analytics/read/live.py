"""What ``GET /v1/live`` shows: the events a product received in the last minutes.

Arrival, not the events' own timestamps, is what "live" means here: an event
sent with a timestamp from last week still appears when it lands. Both reads
go through ``event_ids`` (the identity claims, indexed on ``received_at``),
so each poll touches only the last minutes' rows, however large ``events`` is.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from labs_analytics.read.service import ReadService

WINDOW = dt.timedelta(minutes=5)
LATEST = 20
PREVIEW_CHARS = 200

_PER_MINUTE_SQL = """
SELECT date_trunc('minute', received_at) AS minute, count(*) AS events
FROM event_ids
WHERE received_at >= $2 AND product = $1
GROUP BY 1
"""

_LATEST_SQL = f"""
SELECT e.event_id, e."timestamp", e.name, e.user_id, e.received_at,
       left(e.properties::text, {PREVIEW_CHARS}) AS properties
FROM event_ids AS i
JOIN events AS e
  ON e.event_id = i.event_id AND e.product = i.product AND e."timestamp" = i."timestamp"
WHERE i.received_at >= $2 AND i.product = $1
ORDER BY i.received_at DESC, i.event_id DESC
LIMIT {LATEST}
"""


async def live_snapshot(reads: ReadService, product: str, now: dt.datetime) -> dict[str, Any]:
    """Counts per minute of the last five (oldest first) and the newest events."""
    this_minute = now.replace(second=0, microsecond=0)
    first_minute = this_minute - (WINDOW - dt.timedelta(minutes=1))
    async with reads.connection() as connection:
        per_minute = await connection.fetch(
            _PER_MINUTE_SQL, product, first_minute, timeout=reads.timeout
        )
        latest = await connection.fetch(_LATEST_SQL, product, first_minute, timeout=reads.timeout)
    counts = {row["minute"]: row["events"] for row in per_minute}
    minutes = [first_minute + dt.timedelta(minutes=i) for i in range(5)]
    return {
        "as_of": now.isoformat(),
        "window_start": first_minute.isoformat(),
        "events": sum(counts.values()),
        "per_minute": [
            {"minute": minute.isoformat(), "events": counts.get(minute, 0)} for minute in minutes
        ],
        "latest": [
            {
                "event_id": str(row["event_id"]),
                "timestamp": row["timestamp"].isoformat(),
                "received_at": row["received_at"].isoformat(),
                "name": row["name"],
                "user": row["user_id"],
                "properties": row["properties"],
            }
            for row in latest
        ],
    }
