"""The module-level default client, for scripts: ``analytics.track(...)``.

::

    import labs_analytics_client as analytics

    analytics.track("job.done", user="u_1", properties={"rows": 42})

The client is an ``AnalyticsClient`` made on first use from the environment
(``LABS_ANALYTICS_API_KEY``, ``LABS_ANALYTICS_URL``, and
``LABS_ANALYTICS_DEBUG`` / ``LABS_ANALYTICS_SEND`` / ``LABS_ANALYTICS_ENABLED``
as ``1``/``0``), or by ``configure()``. Without a key it warns once and is
disabled: a script never fails for its analytics. The exit hook drains it
like any client.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any, Unpack

from labs_analytics_client._client import AnalyticsClient
from labs_analytics_client._core import logger
from labs_analytics_client._options import ClientOptions

_lock = threading.Lock()
_client: AnalyticsClient | None = None

_FLAGS = {"debug": "LABS_ANALYTICS_DEBUG", "send": "LABS_ANALYTICS_SEND"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _flag(variable: str) -> bool | None:
    value = os.environ.get(variable, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def _make(api_key: str | None, options: ClientOptions) -> AnalyticsClient:
    for option, variable in _FLAGS.items():
        flag = _flag(variable)
        if flag is not None and option not in options:
            options[option] = flag  # type: ignore[literal-required]
    if "enabled" not in options and _flag("LABS_ANALYTICS_ENABLED") is False:
        options["enabled"] = False
    key = api_key or os.environ.get("LABS_ANALYTICS_API_KEY")
    if not key and options.get("enabled", True) and options.get("send", True):
        logger.warning(
            "analytics.no_api_key: set LABS_ANALYTICS_API_KEY or call configure(api_key=…); "
            "the default client is disabled and track() does nothing"
        )
        options["enabled"] = False
    return AnalyticsClient(key, **options)


def configure(api_key: str | None = None, **options: Unpack[ClientOptions]) -> AnalyticsClient:
    """Make the default client now, with these options (the environment fills the rest).

    A default client made before is closed first (its queue delivered, at
    most its ``shutdown_timeout``). Returns the new client.
    """
    global _client
    new = _make(api_key, options)
    with _lock:
        old, _client = _client, new
    if old is not None:
        old.close()
    return new


def default_client() -> AnalyticsClient:
    """The default client, made from the environment on first use (thread-safe)."""
    global _client
    client = _client
    if client is None:
        with _lock:
            if _client is None:
                _client = _make(None, {})
            client = _client
    return client


def track(
    name: str,
    user: str | None = None,
    properties: Mapping[str, Any] | None = None,
    timestamp: Any = None,
    event_id: Any = None,
    context: Mapping[str, Any] | None = None,
) -> str | None:
    """``track()`` on the default client (see ``AnalyticsClient.track``)."""
    return default_client().track(
        name,
        user=user,
        properties=properties,
        timestamp=timestamp,
        event_id=event_id,
        context=context,
    )


def flush(timeout: float | None = None) -> int:
    """``flush()`` on the default client, if one was made; returns how many are pending."""
    client = _client
    return 0 if client is None else client.flush(timeout)


def close(timeout: float | None = None) -> int:
    """Close the default client, if one was made; the next ``track()`` makes a new one."""
    global _client
    with _lock:
        client, _client = _client, None
    return 0 if client is None else client.close(timeout)
