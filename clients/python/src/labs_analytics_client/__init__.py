"""The Labs Analytics Python SDK: ``track()`` from any back end, sync or asyncio.

::

    from labs_analytics_client import AnalyticsClient

    analytics = AnalyticsClient("lak_…", base_url="https://analytics.example.org")
    analytics.track("post.click", user="u_123", properties={"post_id": 42})

It depends on httpx and the standard library only: nothing of the server
(``pip install httpx`` and this package is all it needs). The Starlette/FastAPI
middleware is plain ASGI and is loaded on first use.

For scripts, the module itself tracks through a default client made from the
environment (``LABS_ANALYTICS_API_KEY``, ``LABS_ANALYTICS_URL``)::

    import labs_analytics_client as analytics

    analytics.track("job.done", user="u_1")
    with analytics.scope(user="u_1", properties={"job": "nightly"}):
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labs_analytics_client._async_client import AsyncAnalyticsClient
from labs_analytics_client._client import AnalyticsClient
from labs_analytics_client._default import close, configure, default_client, flush, track
from labs_analytics_client._events import DropReason, uuid7
from labs_analytics_client._exceptions import (
    AnalyticsError,
    DeliveryError,
    InvalidEvent,
    RequestRejected,
    RetriesExhausted,
    ShutdownTimeout,
    UnexpectedError,
)
from labs_analytics_client._instrument import Span, Timed
from labs_analytics_client._options import ClientOptions, ClientStats, DroppedEvent
from labs_analytics_client._retry import RetryPolicy
from labs_analytics_client._scope import Scope, scope
from labs_analytics_client._version import __version__

if TYPE_CHECKING:
    from labs_analytics_client._middleware import AnalyticsMiddleware

__all__ = [
    "AnalyticsClient",
    "AnalyticsError",
    "AnalyticsMiddleware",
    "AsyncAnalyticsClient",
    "ClientOptions",
    "ClientStats",
    "DeliveryError",
    "DropReason",
    "DroppedEvent",
    "InvalidEvent",
    "RequestRejected",
    "RetriesExhausted",
    "RetryPolicy",
    "Scope",
    "ShutdownTimeout",
    "Span",
    "Timed",
    "UnexpectedError",
    "__version__",
    "close",
    "configure",
    "default_client",
    "flush",
    "scope",
    "track",
    "uuid7",
]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the SDK never loads the web-framework glue.
    if name == "AnalyticsMiddleware":
        from labs_analytics_client._middleware import AnalyticsMiddleware

        return AnalyticsMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
