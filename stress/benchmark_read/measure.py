"""Timing the probes: over HTTP against `serve`, and in-process through `ReadService`.

The HTTP timings are the targets' numbers: the whole request as a client
sees it (connection kept alive). The in-process ones answer the same
/v1/query body through ``ReadService.answer`` (the user summary through
``user_summary``) twice, with the rollups and with raw rows only
(``use_rollups=False``, which the API does not offer), so the speed-up
compares the two paths alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import httpx
import psutil
from stress.benchmark.stack import tree_rss

from labs_analytics.auth.keys import ApiKey, Scope
from labs_analytics.read.request import QueryRequest
from labs_analytics.read.service import ReadService
from labs_analytics.read.summary import SummaryParams, user_summary

from .queries import Probe
from .results import ExportResult, ProbeResult, Timing

WARM_UPS = 2
RSS_INTERVAL_SECONDS = 0.1


async def timed(call: Callable[[], Awaitable[Any]], runs: int, warm_ups: int = WARM_UPS) -> Timing:
    for _ in range(warm_ups):
        await call()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return Timing(tuple(samples))


async def http_once(client: httpx.AsyncClient, probe: Probe) -> dict[str, Any]:
    response = await client.request(probe.method, probe.path, json=probe.body, params=probe.params)
    if response.status_code != 200:
        raise SystemExit(f"{probe.key}: {response.status_code} {response.text[:500]}")
    body: dict[str, Any] = response.json()
    return body


async def measure_probe(
    client: httpx.AsyncClient,
    reads: ReadService,
    product: str,
    probe: Probe,
    runs: int,
    raw_runs: int,
) -> ProbeResult:
    http = await timed(lambda: http_once(client, probe), runs)
    answer = await http_once(client, probe)
    rollup = raw = None
    if probe.is_user_summary:
        source = answer["source"]
        rollup, raw = await _summary_in_process(reads, product, probe, runs, raw_runs)
    elif probe.has_rollup_path:
        source = answer["meta"]["source"]
        request = QueryRequest.model_validate(probe.body)
        rollup = await timed(lambda: reads.answer(product, request), runs)
        rollup_answer = await reads.answer(product, request)
        raw_answer = await reads.answer(product, request, use_rollups=False)
        if raw_answer["results"] != rollup_answer["results"]:
            raise SystemExit(f"{probe.key}: the raw rows answer differently from the rollups")
        raw = await timed(lambda: reads.answer(product, request, use_rollups=False), raw_runs)
    else:
        source = None
    return ProbeResult(
        key=probe.key,
        label=probe.label,
        http=http,
        source=source,
        rollup_in_process=rollup,
        raw_in_process=raw,
    )


async def _summary_in_process(
    reads: ReadService, product: str, probe: Probe, runs: int, raw_runs: int
) -> tuple[Timing, Timing]:
    """The summary through ``user_summary``, planned and raw only; the two checked equal."""
    user = unquote(probe.path.split("/")[-2])
    values: dict[str, Any] = {}
    for name, value in probe.params:
        if name == "top":
            values.setdefault("top", []).append(value)
        else:
            values[name] = value
    params = SummaryParams.model_validate(values)
    key = ApiKey(key_id="bench", product=product, scopes=frozenset({Scope.ADMIN}), key_hash="")

    async def ask(use_rollups: bool) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        answer = await user_summary(reads, key, user, params, now, use_rollups=use_rollups)
        return {k: v for k, v in answer.items() if k not in ("source", "took_ms")}

    if await ask(True) != await ask(False):
        raise SystemExit(f"{probe.key}: the raw rows answer differently from the rollups")
    return await timed(lambda: ask(True), runs), await timed(lambda: ask(False), raw_runs)


def process_rss(root_pid: int) -> list[tuple[int, int]]:
    """(pid, RSS) of a process and its descendants."""
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    sizes = []
    for proc in procs:
        try:
            sizes.append((proc.pid, proc.memory_info().rss))
        except psutil.NoSuchProcess:
            continue
    return sizes


async def export(
    client: httpx.AsyncClient, params: tuple[tuple[str, str], ...], api_pid: int, runs: int
) -> ExportResult:
    """Stream the export ``runs`` times (uncompressed), sampling the serve tree's RSS meanwhile."""
    before = tree_rss(api_pid)
    peak_tree = before
    # Per process (the master and each worker): the export runs in one worker.
    rest: dict[int, int] = dict(process_rss(api_pid))
    peaks: dict[int, int] = dict(rest)
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak_tree
        while not stop.is_set():
            sizes = process_rss(api_pid)
            peak_tree = max(peak_tree, sum(rss for _, rss in sizes))
            for pid, rss in sizes:
                peaks[pid] = max(peaks.get(pid, 0), rss)
            await asyncio.sleep(RSS_INTERVAL_SECONDS)

    sampler = asyncio.create_task(sample())
    rates: list[tuple[float, int]] = []
    try:
        for _ in range(runs):
            rows = 0
            started = time.perf_counter()
            async with client.stream(
                "GET",
                "/v1/export",
                params=params,
                headers={"Accept-Encoding": "identity"},
            ) as response:
                if response.status_code != 200:
                    raise SystemExit(f"export: {response.status_code} {await response.aread()!r}")
                async for chunk in response.aiter_raw():
                    rows += chunk.count(b"\n")
            rates.append((rows / (time.perf_counter() - started), rows))
    finally:
        stop.set()
        await sampler
    busiest = max(peaks, key=lambda pid: peaks[pid] - rest.get(pid, 0))
    rates.sort()
    rate, rows = rates[len(rates) // 2]
    return ExportResult(
        rows=rows,
        rows_per_second=rate,
        runs=runs,
        rss_before_bytes=before,
        rss_peak_bytes=peak_tree,
        rss_peak_process_bytes=peaks[busiest],
        rss_rest_process_bytes=rest.get(busiest, 0),
    )
