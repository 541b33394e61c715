"""Whole processes: exiting without flush, exiting with the server unreachable, forking."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import asyncpg
import pytest

from labs_analytics.settings import Settings
from tests.helpers import (
    ServeProcess,
    create_key,
    duplicated_ids,
    event_rows,
    new_product,
    run_script,
    wait_for_events,
)

# Registered before the client exists, so it runs after the SDK's exit hook
# (atexit is last in, first out) and prints what the hook achieved.
REPORT_AT_EXIT = """
import atexit, dataclasses, json, os, sys, time
def _report():
    exit_seconds = time.monotonic() - END[0] if END else None
    for client in CLIENTS:
        stats = dataclasses.asdict(client.stats())
        print(json.dumps({"pid": os.getpid(), "exit_seconds": exit_seconds, **stats}), flush=True)
CLIENTS, END = [], []
atexit.register(_report)
"""


def reports(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


async def test_a_script_that_exits_without_flush_delivers_all_10000_events_once(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    run = await asyncio.to_thread(
        run_script,
        REPORT_AT_EXIT
        + f"""
from labs_analytics_client import AnalyticsClient
client = AnalyticsClient({key!r}, base_url={shared_server.base_url!r})
CLIENTS.append(client)
for i in range(10_000):
    client.track("bulk.import", user=f"u_{{i % 50}}", properties={{"i": i}})
# no flush(), no close(): the exit hook must deliver
""",
    )
    assert run.returncode == 0, run.stderr
    (report,) = reports(run.stdout)
    assert report["sent"] == 10_000
    assert report["dropped"] == 0
    assert report["failed"] == 0
    await wait_for_events(db, 10_000, product=product)
    stored = await event_rows(db, product)
    assert len(stored) == 10_000
    assert sorted(row["properties"]["i"] for row in stored) == list(range(10_000))
    assert await duplicated_ids(db) == []


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("unreachable", ["refused", "black_hole"])
def test_a_process_whose_server_is_unreachable_exits_within_the_shutdown_timeout(
    unreachable: str, black_hole: int
) -> None:
    if unreachable == "refused":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # closed again: connections are refused
    else:
        port = black_hole
    # Refused: the first attempt failed and is being retried. Black hole: a
    # batch is out, its request waiting for an answer that never comes.
    busy = "retried" if unreachable == "refused" else "in_flight"
    run = run_script(
        REPORT_AT_EXIT
        + f"""
import time
from labs_analytics_client import AnalyticsClient
client = AnalyticsClient(
    "lak_0_x", base_url="http://127.0.0.1:{port}",
    shutdown_timeout=1.5, timeout=30, max_retry_time=600, flush_interval=0.05,
)
CLIENTS.append(client)
for i in range(500):
    client.track("page.view", properties={{"i": i}})
while not client.stats().{busy}:  # the worker is now retrying, or awaiting an answer
    time.sleep(0.01)
END.append(time.monotonic())  # from here on, only the exit hook runs
"""
    )
    assert run.returncode == 0, run.stderr
    (report,) = reports(run.stdout)
    assert report["sent"] == 0
    # Given up at the deadline; with a black hole, up to max_in_flight (4) batches
    # are still awaiting an answer (outcome unknown: counted in flight, not as failed).
    assert report["failed_by_reason"] == {"shutdown_timeout": 500 - report["in_flight"]}
    if unreachable == "black_hole":
        assert 0 < report["in_flight"] <= 4 * 100
    assert "were still pending at the close deadline" in run.stderr
    # The exit hook waited the 1.5 s shutdown timeout, not the 30 s request
    # timeout nor the 600 s retry budget. Generous bounds, for a busy machine:
    # they only tell the shutdown timeout (1.5 s) from the request timeout (30 s).
    assert report["exit_seconds"] < 15, report["exit_seconds"]
    assert run.seconds < 30, run.seconds  # start-up and imports included


async def test_forked_children_deliver_their_own_events_and_not_their_parents(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    run = await asyncio.to_thread(
        run_script,
        REPORT_AT_EXIT
        + f"""
import multiprocessing
from labs_analytics_client import AnalyticsClient
# Batches close only on flush/exit: the parent's events are still queued at fork.
client = AnalyticsClient({key!r}, base_url={shared_server.base_url!r},
                         flush_interval=30, batch_size=1000)
CLIENTS.append(client)
for i in range(100):
    client.track("fork.before", properties={{"i": i}})

pid = os.fork()
if pid == 0:  # child: inherited queue discarded, a new worker and pool
    for i in range(100):
        client.track("fork.child", properties={{"i": i}})
    sys.exit(0)  # a normal exit: the exit hook drains the child's own queue

def in_pool_child():  # multiprocessing children leave through os._exit: no atexit
    for i in range(50):
        client.track("fork.multiprocessing", properties={{"i": i}})

process = multiprocessing.get_context("fork").Process(target=in_pool_child)
process.start()
process.join()
for i in range(100):
    client.track("fork.after", properties={{"i": i}})
os.waitpid(pid, 0)
assert process.exitcode == 0
""",
    )
    assert run.returncode == 0, run.stderr
    by_pid = {report["pid"]: report for report in reports(run.stdout)}
    assert len(by_pid) == 2  # the parent and the os.fork child (mp's skips atexit)
    sent = sorted(report["sent"] for report in by_pid.values())
    assert sent == [100, 200]  # the child sent its 100, not the 100 it inherited
    await wait_for_events(db, 350, product=product)
    stored = await event_rows(db, product)
    names: dict[str, list[int]] = {}
    for row in stored:
        names.setdefault(row["name"], []).append(row["properties"]["i"])
    assert {name: sorted(values) for name, values in names.items()} == {
        "fork.before": list(range(100)),
        "fork.child": list(range(100)),
        "fork.multiprocessing": list(range(50)),
        "fork.after": list(range(100)),
    }
    assert await duplicated_ids(db) == []


async def test_an_async_app_that_never_closes_its_client_still_delivers_at_exit(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    run = await asyncio.to_thread(
        run_script,
        REPORT_AT_EXIT
        + f"""
import asyncio
from labs_analytics_client import AsyncAnalyticsClient
client = AsyncAnalyticsClient({key!r}, base_url={shared_server.base_url!r}, flush_interval=30)
CLIENTS.append(client)

async def main():
    for i in range(300):
        client.track("async.job", properties={{"i": i}})
        if i == 150:
            await asyncio.sleep(0)  # the worker task starts and waits for more
    # returns without aclose(): asyncio.run cancels the task, the exit hook delivers

asyncio.run(main())
""",
    )
    assert run.returncode == 0, run.stderr
    (report,) = reports(run.stdout)
    assert report["sent"] == 300
    await wait_for_events(db, 300, product=product)
    assert sorted(row["properties"]["i"] for row in await event_rows(db, product)) == list(
        range(300)
    )
    assert await duplicated_ids(db) == []
