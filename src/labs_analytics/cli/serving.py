"""`serve` and `flusher`: the API under uvicorn, with its flushers as processes of their own.

`serve` is one command, and three kinds of process: the API (uvicorn, one or
``--workers`` processes), ``--flushers`` flusher processes (as many as workers by default),
and itself, supervising them (``cli.flushers``). Flushing never runs in the
API's event loop: its CPU bursts (decoding and copying thousands of events)
stalled the requests waiting behind them.

Metrics: with more than one process, every process writes its samples to
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds them up. prometheus_client
decides at import whether it is in that mode, so this module imports nothing
that loads it until the directory is set (``tests/unit/test_cli_imports.py``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile

from labs_analytics.cli.common import load_settings
from labs_analytics.logs import get_logger, uvicorn_log_config
from labs_analytics.settings import Settings

log = get_logger("labs_analytics.cli")

# How long uvicorn's supervisor waits for a worker to answer its health check
# before it kills and replaces it (uvicorn's default: 5 s). A new worker
# answers only once it has imported the app; on a loaded machine that took
# longer than 5 s, and the supervisor killed every worker it started, again and
# again, so `serve --workers 2` never came up. A worker hung for good is
# replaced after this long instead.
WORKER_HEALTHCHECK_SECONDS = 30


def serve_api(*, host: str, port: int, workers: int, flushers: int, access_log: bool) -> None:
    # The API processes never flush (their own setting, handed down by the
    # environment as uvicorn workers build their Settings from it).
    os.environ["RUN_FLUSHER"] = "false"
    metrics_dir = None
    if (workers > 1 or flushers > 0) and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        metrics_dir = tempfile.mkdtemp(prefix="labs-analytics-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # Only now: these load prometheus_client, which reads the variable above.
    import uvicorn

    from labs_analytics.api.protocol import (
        BoundedHttpToolsProtocol,
        connection_cap,
        raise_descriptor_limit,
    )
    from labs_analytics.cli.flushers import FlusherProcesses

    settings = load_settings()
    # Workers inherit the limit; each caps its connections below it.
    soft, hard = raise_descriptor_limit(settings.max_connections)
    if connection_cap(settings.max_connections) < settings.max_connections:
        log.warning(
            "serve.descriptor_limit_low",
            nofile_soft=soft,
            nofile_hard=hard,
            max_connections=connection_cap(settings.max_connections),
            hint=f"raise the limit (ulimit -n) to {settings.max_connections + 128} or more",
        )
    supervisor = FlusherProcesses(
        flushers, env=os.environ, shutdown_timeout_seconds=settings.shutdown_timeout_seconds
    )
    # uvicorn re-raises the SIGTERM it has already handled gracefully; a stop
    # we were asked for and completed is a success (exit 0, not 143).
    signal.signal(signal.SIGTERM, _ignore_signal)
    try:
        supervisor.start()
        uvicorn.run(
            "labs_analytics.api.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            # httptools with bounds on head size, head and body time and
            # connections (api/protocol.py): every client may be hostile.
            http=BoundedHttpToolsProtocol,
            timeout_keep_alive=settings.keep_alive_timeout_seconds,  # type: ignore[arg-type]
            log_config=uvicorn_log_config(settings.log_level),
            access_log=access_log,
            server_header=False,
            timeout_graceful_shutdown=round(settings.shutdown_timeout_seconds),
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
        )
    finally:
        # The API has drained: the flushers write what it accepted last.
        supervisor.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _ignore_signal(_signum: int, _frame: object) -> None:
    """The signal was handled already; nothing is left to do."""


def run_flusher(settings: Settings, *, standby: bool = False) -> None:
    asyncio.run(_run_flusher(settings, standby=standby))


async def _run_flusher(settings: Settings, *, standby: bool) -> None:
    from labs_analytics.flusher import Flusher
    from labs_analytics.flusher.flusher import default_consumer_name
    from labs_analytics.queue.connection import create_redis
    from labs_analytics.storage.database import create_copy_pool

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    redis = create_redis(
        settings.redis_url,
        timeout_seconds=settings.redis_timeout_seconds + settings.flush_interval_ms / 1000,
    )
    consumer = default_consumer_name()
    pool = await create_copy_pool(
        settings.database_url, application_name=f"labs-analytics flusher {consumer}"
    )
    try:
        flusher = Flusher(
            redis=redis, pool=pool, settings=settings, consumer_name=consumer, standby=standby
        )
        await flusher.run(stop)
    finally:
        await pool.close()
        await redis.aclose()
