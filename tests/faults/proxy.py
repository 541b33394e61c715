"""A real TCP proxy that loses the answer to one COMMIT.

``CommitDroppingProxy`` listens on a free port of 127.0.0.1 and relays every
connection to PostgreSQL byte for byte, in a thread with its own event loop
(so nothing the test does on its own loop can delay the relay). It watches
what clients send: on a connection that has started a ``COPY`` into
``events_staging`` (a flush transaction), the first COMMIT message is forwarded to the
server, the server's reply is swallowed, and ~100 ms later (once the server
has answered) both sides are closed. The transaction is committed; the
client only knows its connection broke: the outcome is unknown to it. This
happens once; afterwards the proxy relays faithfully.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from dataclasses import dataclass, field

CHUNK = 65536
# A simple-protocol Query message whose whole text is COMMIT (asyncpg's
# ``Transaction`` sends "COMMIT;"): 'Q', int32 length, text, NUL.
COMMIT_MESSAGE = re.compile(rb"Q\x00\x00\x00[\x0b\x0c]COMMIT;?\x00")
ROLLBACK_MESSAGE = re.compile(rb"Q\x00\x00\x00[\x0d\x0e]ROLLBACK;?\x00")


@dataclass
class _Relay:
    dropping: bool = False
    in_flush: bool = False
    reply_swallowed: asyncio.Event = field(default_factory=asyncio.Event)


class CommitDroppingProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, delay: float = 0.1) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.port: int | None = None
        self.dropped = threading.Event()
        self.dropped_at: float | None = None
        self.connections = 0
        self._armed = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> CommitDroppingProxy:
        self._thread = threading.Thread(target=self._run, name="commit-dropping-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10) or self.port is None:
            raise RuntimeError(f"the proxy did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by __enter__ if it happens at start
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                with contextlib.suppress(asyncio.CancelledError):  # stopping: not an error
                    await self._relay(reader, writer)
            finally:
                tasks.discard(task)

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _relay(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        relay = _Relay()

        async def client_to_server() -> None:
            while data := await client_reader.read(CHUNK):
                if b"COPY" in data and b"events_staging" in data:
                    relay.in_flush = True
                commit = COMMIT_MESSAGE.search(data) is not None
                if commit and relay.in_flush and self._armed:
                    self._armed = False
                    relay.dropping = True  # from now on the server's replies go nowhere
                    server_writer.write(data)
                    await server_writer.drain()
                    started = time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(relay.reply_swallowed.wait(), timeout=2)
                    await asyncio.sleep(max(0.0, self.delay - (time.monotonic() - started)))
                    self.dropped_at = time.monotonic()
                    self.dropped.set()
                    return
                if commit or ROLLBACK_MESSAGE.search(data):
                    relay.in_flush = False
                server_writer.write(data)
                await server_writer.drain()

        async def server_to_client() -> None:
            while data := await server_reader.read(CHUNK):
                if relay.dropping:
                    relay.reply_swallowed.set()
                    continue
                client_writer.write(data)
                await client_writer.drain()

        pumps = [
            asyncio.create_task(client_to_server()),
            asyncio.create_task(server_to_client()),
        ]
        try:
            # Either side closing (or the drop) ends the relay: close both.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_writer, server_writer):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
