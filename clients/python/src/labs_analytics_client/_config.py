"""A client's options, checked once and resolved against the environment."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from labs_analytics_client._batching import BatchLimits
from labs_analytics_client._exceptions import DeliveryError
from labs_analytics_client._options import ClientOptions, DroppedEvent
from labs_analytics_client._retry import RetryPolicy
from labs_analytics_client._version import USER_AGENT

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Config:
    """What ``ClientOptions`` and the environment (``LABS_ANALYTICS_*``) amount to."""

    enabled: bool
    send: bool
    api_key: str
    base_url: str
    batch: BatchLimits
    max_queue_size: int
    max_queue_bytes: int
    timeout: float
    shutdown_timeout: float
    max_in_flight: int
    policy: RetryPolicy
    gzip: bool
    sync_mode: bool
    strict: bool
    debug: bool
    on_error: Callable[[DeliveryError], None] | None
    on_drop: Callable[[DroppedEvent], None] | None
    before_send: Callable[[dict[str, Any]], dict[str, Any] | None] | None
    super_properties: dict[str, Any] | None
    default_context: dict[str, Any] | None
    headers: dict[str, str]

    @classmethod
    def resolve(cls, api_key: str | None, options: ClientOptions) -> Config:
        enabled = bool(options.get("enabled", True))
        send = bool(options.get("send", True))
        key = api_key if api_key is not None else os.environ.get("LABS_ANALYTICS_API_KEY")
        if enabled and send and not key:
            raise ValueError(
                "an API key is required: pass api_key=… or set LABS_ANALYTICS_API_KEY "
                "(or enabled=False to turn tracking off)"
            )
        base_url = (
            options.get("base_url") or os.environ.get("LABS_ANALYTICS_URL") or DEFAULT_BASE_URL
        )
        max_in_flight = options.get("max_in_flight", 4)
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise ValueError(f"max_in_flight must be an integer, not {max_in_flight!r}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, not {max_in_flight!r}")
        gzip = bool(options.get("gzip", True))
        super_properties = options.get("super_properties")
        context = options.get("context")
        return cls(
            enabled=enabled,
            send=send,
            api_key=key or "",
            base_url=base_url.rstrip("/"),
            batch=BatchLimits(
                max_events=options.get("batch_size", 100),
                max_bytes=options.get("max_batch_bytes", 500_000),
                interval=options.get("flush_interval", 1.0),
            ),
            max_queue_size=int(_positive("max_queue_size", options.get("max_queue_size", 50_000))),
            max_queue_bytes=int(
                _positive("max_queue_bytes", options.get("max_queue_bytes", 64 * 1024 * 1024))
            ),
            timeout=_positive("timeout", options.get("timeout", 10.0)),
            shutdown_timeout=_positive("shutdown_timeout", options.get("shutdown_timeout", 5.0)),
            max_in_flight=max_in_flight,
            policy=RetryPolicy(
                max_retries=options.get("max_retries"),
                max_retry_time=options.get("max_retry_time", 120.0),
                backoff_initial=options.get("retry_backoff_initial", 0.2),
                backoff_max=options.get("retry_backoff_max", 10.0),
                retry_after_max=options.get("retry_after_max", 60.0),
            ),
            gzip=gzip,
            sync_mode=bool(options.get("sync_mode", False)),
            strict=bool(options.get("strict", False)),
            debug=bool(options.get("debug", False)),
            on_error=options.get("on_error"),
            on_drop=options.get("on_drop"),
            before_send=options.get("before_send"),
            super_properties=dict(super_properties) if super_properties else None,
            default_context=dict(context) if context else None,
            headers=_headers(key or "", gzip, options.get("headers")),
        )


def _headers(api_key: str, gzip: bool, extra: Mapping[str, str] | None) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **({"Content-Encoding": "gzip"} if gzip else {}),
        **dict(extra or {}),
    }
