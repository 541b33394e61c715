"""A connection's loss made into an error in the task that was using it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg


class ConnectionLostError(ConnectionError):
    """The server went away while a statement was waiting to send to it."""


@contextlib.asynccontextmanager
async def cancelled_on_connection_loss(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Turn the connection's loss into an error in the task using it.

    asyncpg's COPY waits for the socket to drain without a deadline of its own;
    if the server dies while that write is paused (its socket full: a busy or
    frozen backend), nothing ever wakes it and the COPY waits forever, command
    timeout or not. asyncpg does call termination listeners on a lost
    connection, so one cancels the waiting task here, and the cancellation
    comes out as ``ConnectionLostError``, a passing failure the flusher retries.
    A cancellation from anyone else (shutdown) stays a cancellation.
    """
    task = asyncio.current_task()
    assert task is not None, "call from inside a task"
    inside = True
    lost = False

    def on_termination(_: object) -> None:
        # Scheduled by asyncpg with call_soon: the block may be over by now.
        nonlocal lost
        if inside:
            lost = True
            task.cancel()

    conn.add_termination_listener(on_termination)
    try:
        yield
    except BaseException as exc:
        if not lost:
            raise
        # Our cancel is taken back whatever came out (a rollback on the dead
        # connection may have replaced it with its own error); one from
        # anyone else is still owed to them.
        if task.uncancel() > 0 and isinstance(exc, asyncio.CancelledError):
            raise
        raise ConnectionLostError("connection to PostgreSQL lost mid-statement") from exc
    finally:
        inside = False
        # A lost pool connection is already detached from its proxy (and its
        # listeners dropped): nothing left to remove then.
        with contextlib.suppress(asyncpg.InterfaceError):
            conn.remove_termination_listener(on_termination)
