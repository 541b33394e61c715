"""The remembered event ids (``event_ids``): forgetting those past the window.

The flusher claims every stored event's id there (storage.bulk_writer), so an
id resent with another timestamp is not stored again. Remembering every id
forever would grow without bound, so ids first received more than
``IDENTITY_WINDOW_DAYS`` ago are forgotten, in bounded batches. Past the
window, a resend with the timestamp it was stored under is still folded by
the primary key of ``events``; one with another timestamp is stored again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

# SKIP LOCKED: a claim a flush transaction holds is never waited on; it is
# recent anyway.
FORGET_SQL = """
WITH expired AS (
    SELECT product, event_id FROM event_ids WHERE received_at < $1
    ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
DELETE FROM event_ids AS ids USING expired
WHERE ids.product = expired.product AND ids.event_id = expired.event_id
"""


async def forget_old_event_ids(
    conn: asyncpg.Connection, *, window_days: int, now: datetime, batch_rows: int
) -> int:
    """Forget the ids first received before ``now - window_days``; how many.

    Each batch commits on its own (``conn`` must not be inside a transaction).
    """
    cutoff = now - timedelta(days=window_days)
    forgotten = 0
    while True:
        status = await conn.execute(FORGET_SQL, cutoff, batch_rows)
        deleted = int(status.rsplit(" ", 1)[-1])
        forgotten += deleted
        if deleted < batch_rows:
            return forgotten
