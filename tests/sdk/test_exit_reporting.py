"""What a process reports when it exits with its server down: once, and alike in both clients."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.helpers import run_script

EVENTS = 6000  # 60 batches of 100: one give-up at the deadline, not sixty

SCRIPT = """
import asyncio, atexit, json, logging, sys, time
from labs_analytics_client import AnalyticsClient, AsyncAnalyticsClient

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
KIND, URL, DOWN = %(kind)r, %(url)r, %(down)r
errors = []

def busy():  # retrying (refused), or each of the 4 workers awaiting an answer (black hole)
    stats = client.stats()
    return stats.retried > 0 if DOWN == "closed_port" else stats.in_flight == 4 * 100

def report():  # registered first: runs after the SDK's exit hook
    print(json.dumps({
        "errors": [(type(e).__name__, len(e.event_ids)) for e in errors],
        "stats": dict(client.stats()),
    }), flush=True)

atexit.register(report)
options = dict(base_url=URL, shutdown_timeout=1.5, on_error=errors.append)
if KIND == "thread":
    client = AnalyticsClient("lak_0_x", **options)
    for i in range(%(events)d):
        client.track("page.view", properties={"i": i})
    while not busy():
        time.sleep(0.01)
else:
    client = AsyncAnalyticsClient("lak_0_x", **options)

    async def main():
        for i in range(%(events)d):
            client.track("page.view", properties={"i": i})
        while not busy():
            await asyncio.sleep(0.01)
        if KIND == "async_aclose":
            await client.aclose()
        # else: the loop ends, its task is cancelled, the exit hook delivers

    asyncio.run(main())
"""


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield sock.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("kind", ["thread", "async_exit", "async_aclose"])
@pytest.mark.parametrize("down", ["closed_port", "black_hole"])
def test_a_give_up_at_exit_is_one_warning_one_on_error_and_the_same_in_both_clients(
    kind: str, down: str, request: pytest.FixtureRequest
) -> None:
    port = request.getfixturevalue(down)
    url = f"http://127.0.0.1:{port}"
    run = run_script(SCRIPT % {"events": EVENTS, "kind": kind, "url": url, "down": down})
    assert run.returncode == 0, run.stderr
    (line,) = [line for line in run.stdout.splitlines() if line.startswith("{")]
    report = json.loads(line)
    stats, errors = report["stats"], report["errors"]
    warnings = [line for line in run.stderr.splitlines() if line.startswith("WARNING")]

    # A request sent and unanswered at the deadline is in flight (the server may
    # have it) in every client; what was never answered for sure is given up.
    # The workers have max_in_flight (4) such requests; an async client whose
    # loop has ended is drained by the exit hook, one blocking request at a time.
    in_flight = 0
    if down == "black_hole":
        in_flight = 100 if kind == "async_exit" else 400
    assert stats["in_flight"] == in_flight
    assert stats["sent"] == 0
    assert stats["queued"] == 0
    assert stats["failed"] == EVENTS - in_flight
    assert stats["failed_by_reason"] == {"shutdown_timeout": EVENTS - in_flight}
    assert errors == [["ShutdownTimeout", EVENTS - in_flight]]
    assert len(warnings) == 1, warnings
    assert f"not_sent={EVENTS - in_flight} in_flight={in_flight}" in warnings[0]
