"""One request to ``POST /v1/events``: the HTTP client, the call, the debug line."""

from __future__ import annotations

import logging
import time

import httpx

from labs_analytics_client._config import Config
from labs_analytics_client._delivery import Reply, Send

logger = logging.getLogger("labs_analytics_client")
EVENTS_PATH = "/v1/events"


def sync_http(config: Config, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    # trust_env (httpx's default): HTTP(S)_PROXY, NO_PROXY and SSL_CERT_FILE are honoured.
    return httpx.Client(
        base_url=config.base_url,
        headers=config.headers,
        timeout=config.timeout,
        transport=transport,
        trust_env=True,
    )


def async_http(
    config: Config, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=config.base_url,
        headers=config.headers,
        timeout=config.timeout,
        transport=transport,
        trust_env=True,
    )


def post(config: Config, http: httpx.Client, action: Send) -> Reply | Exception:
    """Send with blocking I/O; the answer, or the exception the request raised."""
    started = time.monotonic()
    try:
        response = http.post(EVENTS_PATH, content=action.body, timeout=action.timeout)
    except Exception as exc:
        log_exchange(config, action, started, exc)
        return exc
    return answered(config, action, started, response)


def answered(config: Config, action: Send, started: float, response: httpx.Response) -> Reply:
    reply = Reply(response.status_code, response.headers.get("retry-after"), response.content)
    log_exchange(config, action, started, reply)
    return reply


def log_exchange(config: Config, action: Send, started: float, outcome: Reply | Exception) -> None:
    """debug=True: one line per request and its answer (never the headers: the key)."""
    if not config.debug:
        return
    ms = (time.monotonic() - started) * 1000
    if isinstance(outcome, Exception):
        logger.debug(
            "analytics.request method=POST url=%s%s events=%d bytes=%d error=%s ms=%.1f",
            config.base_url,
            EVENTS_PATH,
            action.events,
            len(action.body),
            type(outcome).__name__,
            ms,
        )
        return
    answer = outcome.content
    if config.api_key:  # a proxy could echo the request: redact before cutting
        answer = answer.replace(config.api_key.encode(), b"[key]")
    logger.debug(
        "analytics.request method=POST url=%s%s events=%d bytes=%d status=%d ms=%.1f answer=%r",
        config.base_url,
        EVENTS_PATH,
        action.events,
        len(action.body),
        outcome.status,
        ms,
        answer[:500],
    )
