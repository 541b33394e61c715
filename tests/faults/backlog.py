"""One way to fill the stream for a fault test: a real `serve --no-flusher`, posted to flat out.

With no flusher anywhere, whatever ``build_backlog`` got acknowledged waits in
the Redis stream: the test then starts the flusher it means to break, with the
whole backlog (or one batch of it) already there. The events are the oracle's,
so its check covers them too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from labs_analytics.settings import Settings
from tests.faults.oracle import LoadGenerator, Oracle
from tests.faults.processes import Children
from tests.helpers import ServeProcess

# Filling goes as fast as the server takes it; this only stops a stuck fill.
FILL_SECONDS = 90.0


@dataclass
class Backlog:
    server: ServeProcess  # the `serve --no-flusher` that queued it: load and probes go there
    accepted: list[str]  # the ids of the events acknowledged (202), in the order sent
    statuses: Counter[int | None]  # how each request was answered (None: no answer)


async def build_backlog(
    children: Children,
    settings: Settings,
    oracle: Oracle,
    *,
    events: int,
    event_bytes: int = 2048,
    events_per_request: int = 200,
    **env: str,
) -> Backlog:
    """Start `serve --no-flusher` (``env`` added to its environment) and post it
    ``events`` events (rounded up to whole requests) with a payload of about
    ``event_bytes`` bytes each, ``events_per_request`` a request, from four
    posters, with no pacing. Refusals are not errors here (a
    backlog limit may be what the test is about): compare ``accepted`` with what
    was sent."""
    server = await children.serve(settings, "--no-flusher", **env)
    before = set(oracle.acknowledged)
    fill = LoadGenerator(
        oracle,
        [server.base_url],
        rate=None,
        max_requests=-(-events // events_per_request),
        events_per_request=events_per_request,
        payload_bytes=event_bytes,
        duration=FILL_SECONDS,
    )
    await fill.run()
    accepted = [event_id for event_id in oracle.acknowledged if event_id not in before]
    return Backlog(server, accepted, fill.statuses)
