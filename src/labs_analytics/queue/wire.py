"""Commands packed ahead of time, sent in one write on connections of our own.

The ingest hot path (``StreamProducer``) sends many script calls at once.
Through redis-py's pipeline each call would cost its argument packing, a
checkout from the pool and the pipeline's bookkeeping: more than the call
itself. Instead the producer packs each request's arguments once, as RESP,
when the request arrives, and this module writes every call of a turn of the
event loop in one ``writelines`` and reads their replies in order.

That takes redis-py internals, not its public API; these, and only these
(``tests/integration/test_redis_py_internals.py`` checks that each exists
with the signature used here and that a round trip through them works, and
names the one that changed; ``pyproject.toml`` pins redis-py to the majors
that test passed on):

- ``redis.asyncio.ConnectionPool.make_connection()``: a connection set up as
  the client's own are (address, timeouts, credentials, TLS, protocol), that
  the pool does not hand out or track. It is ours to keep and close, so the
  client's commands never queue behind a write of ours, nor ours behind theirs.
- ``AbstractConnection.send_packed_command(chunks)``, given a list of
  ``bytes`` already in RESP: connects (and authenticates) first if need be,
  then writes them all at once.
- ``AbstractConnection.read_response()``: reads one reply, parsed as the
  client's are (hiredis, or redis-py's own parser). An error reply is raised
  as ``ResponseError`` (``NoScriptError`` for ``NOSCRIPT``) once it has been
  read whole, so the connection stays in step for the replies after it.
- ``AbstractConnection.disconnect(nowait=...)``: closes it; ``nowait=True``
  does not wait on the peer, for a connection a failure left out of step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

# Connections kept for the next exchange; more are opened while exchanges overlap.
MAX_IDLE_CONNECTIONS = 4


def pack_bulk_strings(args: Iterable[bytes]) -> bytes:
    """Arguments in the Redis protocol (RESP), as they follow a command's ``*<count>`` line."""
    return b"".join([b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args])


def pack_command(args: Iterable[bytes]) -> bytes:
    """A whole command in RESP: its ``*<count>`` line, then its arguments."""
    items = list(args)
    return b"*%d\r\n" % len(items) + pack_bulk_strings(items)


class DirectConnections:
    """Connections made by a client's pool but kept apart from it, for exchanges
    of commands packed by the caller."""

    def __init__(self, pool: ConnectionPool, *, max_idle: int = MAX_IDLE_CONNECTIONS) -> None:
        self._pool = pool
        self._max_idle = max_idle
        self._idle: list[AbstractConnection] = []

    async def exchange(self, chunks: list[bytes], replies: int) -> list[Any]:
        """Write ``chunks`` (RESP holding ``replies`` commands) at once; their replies in order.

        An error reply takes its command's place as the ``ResponseError``: that
        command failed, the others stand. Anything else (connection lost,
        timeout, cancellation) raises, and the connection is dropped: whatever
        was written or half read, it is out of step.
        """
        connection = self._idle.pop() if self._idle else self._new_connection()
        try:
            await connection.send_packed_command(chunks)
            answers: list[Any] = []
            for _ in range(replies):
                try:
                    answers.append(await connection.read_response())
                except ResponseError as exc:
                    answers.append(exc)
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        if len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            await connection.disconnect()
        return answers

    def _new_connection(self) -> AbstractConnection:
        made: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        return made

    async def aclose(self) -> None:
        """Close the connections kept (the pool and its own connections are the caller's)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()
