"""The HTTP/1.1 connection protocol `serve` runs: uvicorn's httptools one, bounded.

uvicorn's httptools protocol trusts its clients: it has no limit on the size
of a request head (and grows header values by repeated concatenation, so an
endless header costs quadratic CPU), and no time limit on a request head or
body. One socket could stall a worker; a thousand idle ones could exhaust its
descriptors. ``BoundedHttpToolsProtocol`` adds, per connection:

- **Head size.** Request line plus headers at most ``max_header_bytes``:
  counted as bytes arrive (so a head still growing is cut off at the limit,
  never buffered past it) and again when it completes. Over it: 431, closed.
- **Head time.** A new connection must deliver a whole request head within
  ``header_timeout_seconds``, and so must every later request once its first
  byte arrived: else 408 (or a plain close when nothing was sent), closed.
  Between requests, uvicorn's keep-alive timeout closes idle connections.
- **Body time.** A body must arrive whole within ``body_timeout_seconds`` of
  its head: else the connection is closed and the app sees a disconnect.
- **Connection cap.** At most ``max_connections`` per process (kept below the
  descriptor limit). At the cap a new connection evicts, in this order: the
  oldest one that never completed a request head (silent or dripping), one
  whose head or body has stalled, the longest-idle keep-alive one; when every
  connection is working it gets a 503.
- **Bodies we will not read.** A request answered before its body arrived
  (refused early: 401, 413, a limited key's 429) is not parsed on: the
  server half-closes, discards what the client still sends (at most
  ``LINGER_BYTES``, for at most ``LINGER_SECONDS``: with what the kernel's
  buffers hold, a client that writes a body of ordinary size before reading
  still sees the answer rather than a reset), and closes. Discarding a whole
  1 MiB body for each refused request cost a quiet client 2.3x its latency
  under a flood of them; 256 KiB, 1.8x (BENCHMARKS.md).
- **Upgrades we do not speak.** An ``Upgrade: h2c`` request (``curl --http2``
  over http) is served as the plain HTTP/1.1 request it also is, as RFC 9110
  allows; uvicorn would drop its body.

It also writes each response's head and body in one system call rather than
uvicorn's two (``api.response_writes``).

The checks cost a few attribute reads per packet; timers are armed only for
heads and bodies that span packets (BENCHMARKS.md measures the difference).
"""

from __future__ import annotations

import asyncio
import functools
import resource
import time
import weakref
from typing import Any, Literal, NamedTuple

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from labs_analytics import metrics
from labs_analytics.api.response_writes import HeadWithBodyTransport
from labs_analytics.logs import get_logger
from labs_analytics.settings import Settings

log = get_logger(__name__)

# Descriptors a process keeps for itself besides client sockets: PostgreSQL and
# Redis connections, spool segments, logs, the listening socket.
RESERVED_DESCRIPTORS = 128

# A request that received nothing for this long may be evicted at the connection cap.
STALL_SECONDS = 1.0

# After answering a request whose body has not all arrived (refused early: 401,
# 413, 429 before reading), how long we discard what still comes before
# closing: enough for a client that sends its whole body before reading.
LINGER_SECONDS = 2.0
LINGER_BYTES = 256 * 1024

Deadline = Literal["head", "body", "linger"]


class ConnectionLimits(NamedTuple):
    max_header_bytes: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout_seconds=settings.header_timeout_seconds,
            body_timeout_seconds=settings.body_timeout_seconds,
            max_connections=connection_cap(settings.max_connections),
        )


def connection_cap(configured: int) -> int:
    """``configured``, lowered to what the descriptor limit can hold."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(16, min(configured, soft - RESERVED_DESCRIPTORS))


def raise_descriptor_limit(connections: int) -> tuple[int, int]:
    """Raise the soft descriptor limit towards what ``connections`` need (up to the hard one).

    Returns the (soft, hard) limits in force afterwards. Children (uvicorn
    workers) inherit them.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard


@functools.cache
def _process_limits() -> ConnectionLimits:
    # uvicorn builds a protocol per connection from its Config alone; our
    # limits come from the same Settings the app factory reads, once per process.
    return ConnectionLimits.from_settings(Settings())


_UNPROVEN: weakref.WeakKeyDictionary[ServerState, dict[BoundedHttpToolsProtocol, None]] = (
    weakref.WeakKeyDictionary()
)


def _unproven_connections(server: ServerState) -> dict[BoundedHttpToolsProtocol, None]:
    """A server's connections that have not yet completed a request head, oldest first."""
    found = _UNPROVEN.get(server)
    if found is None:
        found = _UNPROVEN[server] = {}
    return found


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, bounded in head size, head and body time, connections."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = _process_limits()
        self._in_head = True  # bytes arriving now belong to a request head
        self._head_bytes = 0
        self._completed_heads = 0
        self._opened_at = self._last_data_at = time.monotonic()
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_kind: Deadline | None = None
        self._upgrade_ignored = False
        self._unproven: dict[BoundedHttpToolsProtocol, None] = {}
        self._lingered: int | None = None  # bytes discarded since the early answer

    # --- connection ------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._unproven = _unproven_connections(self.server_state)
        self._unproven[self] = None
        if len(self.connections) > self._limits.max_connections and not self._evict_one():
            metrics.CONNECTIONS_REFUSED.labels("connection_cap").inc()
            self._refuse(503, "the server has too many open connections; retry shortly")
            return
        self._arm("head", self._limits.header_timeout_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._unproven.pop(self, None)
        super().connection_lost(exc)

    def _evict_one(self) -> bool:
        """Close the connection least likely to be a working client; False if all are busy."""
        victim = next(
            (c for c in self._unproven if c is not self and not c.transport.is_closing()), None
        )
        if victim is None:
            # Rare: only when no connection is still on its first head. A scan.
            now = time.monotonic()
            ranked = [
                (rank, other)
                for other in self.connections
                if other is not self
                and isinstance(other, BoundedHttpToolsProtocol)
                and (rank := other._eviction_rank(now)) is not None
            ]
            if not ranked:
                return False
            victim = min(ranked, key=lambda pair: pair[0])[1]
        metrics.CONNECTIONS_REFUSED.labels("evicted").inc()
        victim._disarm()
        victim.transport.close()
        # Closing frees the descriptor only once the loop runs the close; the
        # set must already count one fewer for the next arrival's check.
        self.connections.discard(victim)
        self._unproven.pop(victim, None)
        return True

    def _eviction_rank(self, now: float) -> tuple[int, float] | None:
        """Lower goes first: (class, since when); None for a connection doing work.

        0: never completed a request head (silent, or dripping one), oldest first;
        1: stalled in a later head or in a body (no bytes for STALL_SECONDS);
        2: idle between requests (keep-alive), longest idle first.
        (Class 0 is also kept in order in ``_unproven``, so the common case
        needs no scan.)
        """
        if self.transport.is_closing():
            return None
        if self._completed_heads == 0:
            return (0, self._opened_at)
        stalled = now - self._last_data_at > STALL_SECONDS
        if self._in_head:
            if self._head_bytes:
                return (1, self._last_data_at) if stalled else None
            if self.cycle is None or self.cycle.response_complete:
                return (2, self._last_data_at)
            return None  # answering: the app is working
        if self.cycle is not None and self.cycle.more_body and stalled:
            return (1, self._last_data_at)
        return None

    # --- bytes in ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self._last_data_at = time.monotonic()
        if self._lingered is not None:
            self._lingered += len(data)
            if self._lingered > LINGER_BYTES:
                self.transport.close()
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._serve_without_upgrade(data[upgrade.args[0] :])
            return
        if self.transport.is_closing():
            return
        if self._in_head:
            if self._head_bytes > self._limits.max_header_bytes:
                self._refuse_oversized_head()
            elif self._head_bytes and self._deadline_kind != "head":
                self._arm("head", self._limits.header_timeout_seconds)
        elif self.cycle is not None and self.cycle.more_body and self._deadline_kind != "body":
            self._arm("body", self._limits.body_timeout_seconds)

    # --- parser callbacks -------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._completed_heads += 1
        self._unproven.pop(self, None)
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self._limits.max_header_bytes:
            # The whole head came in one read, past the running count: refuse it
            # before the app sees it.
            self._refuse_oversized_head()
            return
        if self.parser.should_upgrade() and not self._should_upgrade():
            self._upgrade_ignored = True  # re-parsed without it in data_received
            return
        self._disarm()
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not previous:  # not a websocket upgrade
            self.cycle.transport = HeadWithBodyTransport(self.transport, self.cycle)  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        if self._upgrade_ignored or self.transport.is_closing():
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._upgrade_ignored or self.transport.is_closing():
            return
        if self._deadline_kind == "body":
            self._disarm()
        # Whatever arrives next starts the next request's head.
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # The cycle is the one that just answered unless requests are pipelined
        # behind it; those are served as uvicorn would.
        answered_early = not self.pipeline and self.cycle.response_complete and self.cycle.more_body
        if answered_early and not self.transport.is_closing():
            self.server_state.total_requests += 1
            self._linger()
            return
        super().on_response_complete()

    def _linger(self) -> None:
        """Answered before the body arrived: let the client read the answer, then close."""
        self._lingered = 0
        self._unset_keepalive_if_required()
        self.flow.resume_reading()  # discard, rather than let the kernel buffer fill
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm("linger", LINGER_SECONDS)

    # --- refusing ----------------------------------------------------------------

    def _refuse_oversized_head(self) -> None:
        metrics.CONNECTIONS_REFUSED.labels("head_too_large").inc()
        self._refuse(431, f"request line and headers exceed {self._limits.max_header_bytes} bytes")

    def _refuse(self, status: int, message: str) -> None:
        """Answer with a JSON error and close; the app never sees the request."""
        self._disarm()
        answering = (
            self.cycle is not None
            and self.cycle.response_started
            and not self.cycle.response_complete
        )
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app, if running, must not write after us
        if not answering:  # (a keep-alive connection's previous answer is complete)
            self.transport.write(_error_response(status, message))
        self.transport.close()

    def _serve_without_upgrade(self, rest: bytes) -> None:
        """Parse the request again as the plain HTTP/1.1 request it also is."""
        if not self._upgrade_ignored or self.parser.get_method() == b"CONNECT":
            self._refuse(400, "CONNECT and protocol upgrades are not supported")
            return
        self._upgrade_ignored = False
        head = _head_without_upgrade(
            self.parser.get_method(), self.url, self.parser.get_http_version(), self.headers
        )
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self._in_head, self._head_bytes = True, 0
        self._completed_heads -= 1  # counted again when the new parser completes it
        self.data_received(head + rest)

    # --- deadlines ---------------------------------------------------------------

    def _arm(self, kind: Deadline, seconds: float) -> None:
        self._disarm()
        self._deadline_kind = kind
        self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._deadline_kind = None, None

    def _deadline_passed(self) -> None:
        kind, self._deadline, self._deadline_kind = self._deadline_kind, None, None
        if self.transport.is_closing():
            return
        if kind == "linger":
            self.transport.close()
            return
        metrics.CONNECTIONS_REFUSED.labels(f"{kind}_timeout").inc()
        if kind == "head" and self._head_bytes == 0:
            self.transport.close()  # a connection that never said anything
        elif kind == "head":
            self._refuse(408, "the request head did not arrive in time")
        else:
            # The app is reading the body: it sees a disconnect.
            self.transport.close()


def _head_without_upgrade(
    method: bytes, url: bytes, http_version: str, headers: list[tuple[bytes, bytes]]
) -> bytes:
    lines = [b"%s %s HTTP/%s\r\n" % (method, url, http_version.encode())]
    for name, value in headers:
        if name in (b"upgrade", b"http2-settings"):
            continue
        if name == b"connection":
            tokens = [
                token.strip()
                for token in value.split(b",")
                if token.strip().lower() not in (b"upgrade", b"http2-settings")
            ]
            if not tokens:
                continue
            value = b", ".join(tokens)
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    return b"".join(lines)


_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
_CODES = {
    400: "malformed_request",
    408: "request_timeout",
    431: "headers_too_large",
    503: "too_many_connections",
}


def _error_response(status: int, message: str) -> bytes:
    body = b'{"error":"%s","message":"%s","details":[]}' % (
        _CODES[status].encode(),
        message.encode(),
    )
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n" % (status, _REASONS[status], len(body))
    )
    if status == 503:
        head += b"retry-after: 1\r\n"
    return head + b"\r\n" + body
