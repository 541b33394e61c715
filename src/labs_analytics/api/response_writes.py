"""One write per response: the head of a response goes out with its body.

uvicorn's response cycle writes a response's head when the app sends
``http.response.start`` and its body at ``http.response.body``: two
``send()`` calls for every answer, two TCP segments, and on loopback two
wakeups of the client. For a 202 of a few dozen bytes the second system call
is most of what writing costs: in a profile of single-event ingest a quarter
of an API worker's time went to these writes (BENCHMARKS.md). A cycle of ours
writes through ``HeadWithBodyTransport``, which holds a head that declares a
``Content-Length`` and sends it joined to the first body write that follows
(in practice the next ``send`` of the same request).

Nothing else changes: a chunked (streaming) response's head is written at
once, and a held head is never lost: it goes out before the connection is
closed, whatever closes it through the cycle.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle


class HeadWithBodyTransport:
    """The transport one response cycle writes through (``cycle.transport``)."""

    __slots__ = ("_cycle", "_head", "_head_seen", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head + data)
            return
        cycle = self._cycle
        if cycle.response_started and not self._head_seen:
            # The cycle writes the head right after marking the response
            # started (an earlier write, before the start, is a 100 Continue).
            self._head_seen = True
            # A HEAD answer has no body to wait for (uvicorn writes none).
            if (
                cycle.chunked_encoding is False
                and cycle.expected_content_length > 0
                and cycle.scope["method"] != "HEAD"
            ):
                self._head = bytes(data)  # the cycle joined it from a list: already bytes
                return
        self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def _flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            if not self._transport.is_closing():
                self._transport.write(head)

    def __getattr__(self, name: str) -> Any:
        # Anything else a cycle may reach for is the connection's own transport.
        return getattr(self._transport, name)
