"""multiprocessing children: every client drains at the child's exit, however it was made.

Pool and ProcessPoolExecutor workers leave through ``os._exit`` (no
``atexit``). The clients here batch 1,000 events and flush only every 30 s,
so whatever is delivered is delivered by the exit drain: a child that skips
it delivers nothing at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import asyncpg
import pytest

from labs_analytics.settings import Settings
from labs_analytics_client import AnalyticsClient
from tests.helpers import (
    SDK,
    ServeProcess,
    create_key,
    duplicated_ids,
    event_rows,
    new_product,
    wait_for_events,
)

EVENTS = 1_000

# A file, not `python -c`: spawn and forkserver children import the main module by path.
JOB = """
import json, os, sys
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from labs_analytics_client import AnalyticsClient

METHOD, WHERE = os.environ["JOB_METHOD"], os.environ["JOB_WHERE"]
client = None


def make_client():
    global client
    client = AnalyticsClient(
        os.environ["JOB_KEY"], base_url=os.environ["JOB_URL"],
        flush_interval=30, batch_size=1000,  # nothing leaves before the exit drain
    )


if WHERE == "at_import":  # made while a spawn/forkserver child imports this module
    make_client()


def task(i):
    if client is None:  # "lazily_in_task"
        make_client()
    client.track("pool.task", properties={"i": i})
    return os.getpid()


def run():
    ctx = multiprocessing.get_context(METHOD)
    initializer = make_client if WHERE == "initializer" else None
    if POOL == "executor":
        with ProcessPoolExecutor(4, mp_context=ctx, initializer=initializer) as executor:
            pids = list(executor.map(task, range(EVENTS), chunksize=25))
    elif POOL == "pool_with":  # the standard library's idiom: leaving calls terminate()
        with ctx.Pool(4, initializer=initializer) as pool:
            pids = pool.map(task, range(EVENTS), chunksize=25)
    else:
        pool = ctx.Pool(4, initializer=initializer)
        pids = pool.map(task, range(EVENTS), chunksize=25)
        pool.close()
        pool.join()
    print(json.dumps({"workers": len(set(pids))}), flush=True)


POOL, EVENTS = os.environ["JOB_POOL"], int(os.environ["JOB_EVENTS"])
if __name__ == "__main__":
    run()
"""


def run_job(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB))
    try:
        return subprocess.run(
            [sys.executable, str(script)],
            env={**os.environ, "PYTHONPATH": str(SDK / "src"), **env},
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = (
            exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        )
        raise AssertionError(f"the job hung; what it printed:\n{stderr}") from exc


async def assert_all_delivered_once(db: asyncpg.Connection, product: str) -> None:
    await wait_for_events(db, EVENTS, product=product, timeout=30)
    stored = await event_rows(db, product)
    assert sorted(row["properties"]["i"] for row in stored) == list(range(EVENTS))
    assert await duplicated_ids(db) == []


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
@pytest.mark.parametrize(
    ("pool", "where"),
    [
        ("pool", "initializer"),
        ("pool", "lazily_in_task"),
        ("pool", "at_import"),
        ("executor", "initializer"),
        ("executor", "lazily_in_task"),
    ],
)
async def test_every_client_of_a_multiprocessing_child_drains_at_its_exit(
    pool: str,
    where: str,
    method: str,
    tmp_path: Path,
    shared_server: ServeProcess,
    sdk_settings: Settings,
    db: asyncpg.Connection,
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    run = run_job(
        tmp_path,
        JOB_KEY=key,
        JOB_URL=shared_server.base_url,
        JOB_METHOD=method,
        JOB_WHERE=where,
        JOB_POOL=pool,
        JOB_EVENTS=str(EVENTS),
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1])["workers"] >= 1
    await assert_all_delivered_once(db, product)
    assert "analytics." not in run.stderr  # nothing dropped, failed or timed out


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
async def test_leaving_with_pool_which_sigterms_the_workers_loses_nothing(
    method: str,
    tmp_path: Path,
    shared_server: ServeProcess,
    sdk_settings: Settings,
    db: asyncpg.Connection,
) -> None:
    """`with Pool() as pool:` ends in terminate(): SIGTERM, often mid-drain."""
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    run = run_job(
        tmp_path,
        JOB_KEY=key,
        JOB_URL=shared_server.base_url,
        JOB_METHOD=method,
        JOB_WHERE="initializer",
        JOB_POOL="pool_with",
        JOB_EVENTS=str(EVENTS),
    )
    assert run.returncode == 0, run.stderr
    await assert_all_delivered_once(db, product)
    assert "analytics." not in run.stderr


def blocked_signals(native_id: int) -> set[int]:
    """The signals a thread of this process blocks, from its /proc status."""
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    mask = int(
        next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16
    )
    return {number for number in range(1, 65) if mask >> (number - 1) & 1}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
async def test_the_clients_threads_leave_signals_to_the_main_thread(
    shared_server: ServeProcess, sdk_settings: Settings
) -> None:
    """Python runs handlers only in the main thread, but the kernel gives a
    process's SIGTERM to any thread that does not block it: one taken by a
    delivery thread left a Pool worker blocked in C alive through terminate()."""
    key = await create_key(sdk_settings, product=new_product())
    client = AnalyticsClient(key, base_url=shared_server.base_url, flush_interval=30)
    try:
        client.track("signals.check")  # starts the delivery threads
        ours = [t for t in threading.enumerate() if t.name.startswith("labs-analytics-client-")]
        assert ours
        for thread in ours:
            assert thread.native_id is not None
            blocked = blocked_signals(thread.native_id)
            assert {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1} <= blocked
            assert signal.SIGSEGV not in blocked  # a fault goes to the thread at fault
        # The thread that made the client keeps its mask.
        assert signal.SIGTERM not in blocked_signals(threading.get_native_id())
    finally:
        await asyncio.to_thread(client.close)


STUCK_IN_C = """
import ctypes, json, multiprocessing, os
from labs_analytics_client import AnalyticsClient


def child(ready):
    client = AnalyticsClient(
        os.environ["JOB_KEY"], base_url=os.environ["JOB_URL"], flush_interval=30, batch_size=1000
    )
    for i in range(int(os.environ["JOB_EVENTS"])):
        client.track("stuck.task", properties={"i": i})
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER (glibc)
    libc.pthread_mutex_lock(mutex)
    ready.set()
    # Blocked in C for good (a default mutex taken twice), the GIL released:
    # no Python code runs here again, so a Python-level handler never does.
    libc.pthread_mutex_lock(mutex)


if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    process = ctx.Process(target=child, args=(ready,))
    process.start()
    assert ready.wait(60), "the child never got ready"
    process.terminate()
    process.join(60)
    print(json.dumps({"exitcode": process.exitcode}), flush=True)
"""


async def test_a_sigterm_whose_handler_never_runs_still_drains_the_child(
    tmp_path: Path, shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    """The main thread blocked in C when SIGTERM lands: the wakeup fd's reader drains."""
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    script = tmp_path / "stuck.py"
    script.write_text(textwrap.dedent(STUCK_IN_C))
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script)],
        env={
            **os.environ,
            "JOB_KEY": key,
            "JOB_URL": shared_server.base_url,
            "JOB_EVENTS": str(EVENTS),
        },
        capture_output=True,
        text=True,
        timeout=90,  # a hang fails here, before the test timeout
        check=False,
    )
    assert run.returncode == 0, run.stderr
    exitcode = json.loads(run.stdout.splitlines()[-1])["exitcode"]
    assert exitcode in (-signal.SIGTERM, 128 + signal.SIGTERM), run.stderr  # ended, not hung
    await assert_all_delivered_once(db, product)
