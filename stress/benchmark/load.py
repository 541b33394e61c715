"""Load generation: POST one body at a URL, flat out (`load`) or at a rate (`paced`).

wrk drives the load when it is installed (`apt-get install wrk`); otherwise
a multi-process Python client does, which costs more CPU per request and so
takes more of the machine from the server under test. Both report a
`LoadResult`, including the generator's own CPU use.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import re
import resource
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .results import LoadResult

CONNECTIONS = 32
# Paced runs use many connections, each pausing long between requests: the
# offered rate then depends little on the latency under load.
PACED_CONNECTIONS = 128
PACE_SEGMENT_SECONDS = 10

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
{delay}
done = function(summary, latency, requests)
  io.write(string.format("JSON {\\"p50\\": %d, \\"p99\\": %d}\\n",
    latency:percentile(50), latency:percentile(99)))
end
"""


def load(url: str, key: str, body: bytes, seconds: int, work: Path) -> LoadResult:
    """As many requests as ``CONNECTIONS`` connections give in ``seconds``."""
    if shutil.which("wrk"):
        return run_wrk(url, key, body, seconds, work)
    return run_python_load(url, key, body, seconds)


def paced(
    url: str,
    key: str,
    body: bytes,
    rate: float,
    seconds: int,
    work: Path,
    adjust: Callable[[float], float] | None = None,
) -> LoadResult:
    """About ``rate`` requests/s for ``seconds``; what was really sent is in the result.

    ``adjust``, called between segments with the current rate, returns the next one.
    """
    if shutil.which("wrk"):
        return _paced_wrk(url, key, body, rate, seconds, work, adjust)
    return _paced_python(url, key, body, rate, seconds)


# --- wrk --------------------------------------------------------------------------


def run_wrk(
    url: str,
    key: str,
    body: bytes,
    seconds: int,
    work: Path,
    *,
    connections: int = CONNECTIONS,
    delay_ms: float | None = None,
) -> LoadResult:
    """wrk at full speed, or paced: each connection waits ``delay_ms`` between requests."""
    body_file = work / f"body-{uuid.uuid4().hex[:6]}.json"
    body_file.write_bytes(body)
    script = work / f"post-{uuid.uuid4().hex[:6]}.lua"
    # Random around the mean: the connections drift apart instead of firing together.
    low, high = (round(delay_ms * 0.5), round(delay_ms * 1.5)) if delay_ms else (0, 0)
    delay = f"delay = function() return math.random({low}, {high}) end" if delay_ms else ""
    script.write_text(
        WRK_SCRIPT.replace("{key}", key).replace("{body}", str(body_file)).replace("{delay}", delay)
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return parse_wrk_output(
        result.stdout,
        generator_cpu_percent=100 * cpu / seconds,
        generator=f"wrk -t2 -c{connections}",
    )


def parse_wrk_output(out: str, *, generator_cpu_percent: float, generator: str) -> LoadResult:
    """wrk's summary, plus the JSON line WRK_SCRIPT's `done` adds (latencies in µs)."""
    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps_match is None:
        raise ValueError(f"no Requests/sec in wrk's output:\n{out}")
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(g) for g in match.groups())
    latency = json.loads(out.split("JSON ", 1)[1].splitlines()[0])
    return LoadResult(
        requests_per_second=float(rps_match.group(1)),
        p50_ms=latency["p50"] / 1000,
        p99_ms=latency["p99"] / 1000,
        errors=errors,
        generator_cpu_percent=generator_cpu_percent,
        generator=generator,
    )


def _paced_wrk(
    url: str,
    key: str,
    body: bytes,
    rate: float,
    seconds: int,
    work: Path,
    adjust: Callable[[float], float] | None,
) -> LoadResult:
    # wrk paces by a pause before each request on each connection (random
    # around its mean, so the connections do not fire together), and the
    # rate then also depends on the latency under this load. So the run
    # is cut into segments, and after each the pause is corrected from
    # the rate it really gave.
    period_ms = PACED_CONNECTIONS * 1000 / rate
    delay_ms = period_ms * 0.9
    sent = cpu_seconds = 0.0
    errors = 0
    done = 0
    while done < seconds:
        segment = min(PACE_SEGMENT_SECONDS, seconds - done)
        part = run_wrk(
            url, key, body, segment, work, connections=PACED_CONNECTIONS, delay_ms=delay_ms
        )
        done += segment
        sent += part.requests_per_second * segment
        errors += part.errors
        cpu_seconds += part.generator_cpu_percent / 100 * segment
        latency_ms = PACED_CONNECTIONS * 1000 / max(part.requests_per_second, 1e-6) - delay_ms
        if adjust is not None:
            rate = adjust(rate)
            period_ms = PACED_CONNECTIONS * 1000 / rate
        delay_ms = max(1.0, period_ms - max(0.0, latency_ms))
    return LoadResult(
        requests_per_second=sent / seconds,
        p50_ms=float("nan"),
        p99_ms=float("nan"),
        errors=errors,
        generator_cpu_percent=100 * cpu_seconds / seconds,
        generator=f"wrk -t2 -c{PACED_CONNECTIONS}, paced",
    )


# --- the Python fallback ------------------------------------------------------------


def run_python_load(url: str, key: str, body: bytes, seconds: int) -> LoadResult:
    processes = 4
    queue: Any = multiprocessing.Queue()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = [
        multiprocessing.Process(
            target=_python_worker, args=(url, key, body, seconds, CONNECTIONS // processes, queue)
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    latencies = sorted(lat for lats, _ in results for lat in lats)
    return LoadResult(
        requests_per_second=len(latencies) / seconds,
        p50_ms=1000 * latencies[len(latencies) // 2],
        p99_ms=1000 * latencies[int(len(latencies) * 0.99)],
        errors=sum(err for _, err in results),
        generator_cpu_percent=100 * cpu / seconds,
        generator=f"python x{processes}",
    )


def _python_worker(url: str, key: str, body: bytes, seconds: float, conns: int, out: Any) -> None:
    async def main() -> None:
        latencies: list[float] = []
        errors = 0
        deadline = time.monotonic() + seconds
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def loop() -> None:
                nonlocal errors
                while time.monotonic() < deadline:
                    start = time.perf_counter()
                    try:
                        response = await client.post(url, content=body, headers=headers)
                        if response.status_code >= 300:
                            errors += 1
                    except httpx.HTTPError:
                        errors += 1
                    latencies.append(time.perf_counter() - start)

            await asyncio.gather(*(loop() for _ in range(conns)))
        out.put((latencies, errors))

    asyncio.run(main())


def _paced_python(url: str, key: str, body: bytes, rate: float, seconds: int) -> LoadResult:
    processes = 2
    queue: Any = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(
            target=_paced_worker, args=(url, key, body, rate / processes, seconds, queue)
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    sent = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    return LoadResult(
        requests_per_second=sum(n for n, _ in sent) / seconds,
        p50_ms=float("nan"),
        p99_ms=float("nan"),
        errors=sum(e for _, e in sent),
        generator_cpu_percent=float("nan"),
        generator="python paced",
    )


def _paced_worker(url: str, key: str, body: bytes, rate: float, seconds: float, out: Any) -> None:
    """Send ``rate`` requests/s for ``seconds`` (open loop: late sends are not skipped)."""

    async def main() -> None:
        errors = sent = 0
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as c:
            start = time.monotonic()
            pending: set[asyncio.Task[None]] = set()

            async def one() -> None:
                nonlocal errors
                try:
                    if (await c.post(url, content=body, headers=headers)).status_code != 202:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1

            while (now := time.monotonic() - start) < seconds:
                due = int(now * rate) + 1
                while sent < due:
                    task = asyncio.create_task(one())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    sent += 1
                await asyncio.sleep(0.005)
            await asyncio.gather(*pending)
        out.put((sent, errors))

    asyncio.run(main())
