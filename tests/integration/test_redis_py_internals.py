"""The redis-py internals the ingest hot path relies on are still there, and still work.

``labs_analytics.queue.wire`` writes pre-packed RESP on redis-py's own
connection objects: ``ConnectionPool.make_connection``,
``AbstractConnection.send_packed_command``, ``read_response`` and
``disconnect``. None of them is public API, so a redis-py upgrade may change
them without notice. These tests check each exists with the signature the
module calls it with, then make round trips through them against the
session's real Redis; a failure names the internal that changed, so an
upgrade fails here, in CI, and not in production. ``pyproject.toml`` pins
redis-py to the majors these tests passed on.
"""

from __future__ import annotations

import asyncio
import inspect
import tomllib
from collections.abc import AsyncIterator, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from labs_analytics.queue.connection import create_redis
from labs_analytics.queue.producer import RateLimit, StreamProducer
from labs_analytics.queue.wire import DirectConnections, pack_command
from labs_analytics.settings import Settings

REDIS_PY = version("redis")


def internal(owner: type, name: str) -> Callable[..., Any]:
    """``owner.name``, or a failure that says which internal is gone."""
    found = getattr(owner, name, None)
    assert callable(found), (
        f"redis-py {REDIS_PY}: {owner.__module__}.{owner.__qualname__}.{name} is gone; "
        "labs_analytics.queue.wire relies on it (see its docstring)"
    )
    return found


def parameters(owner: type, name: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(internal(owner, name)).parameters)


def changed(owner: type, name: str, how: str) -> str:
    return (
        f"redis-py {REDIS_PY}: {owner.__qualname__}.{name} changed ({how}); "
        "labs_analytics.queue.wire relies on it (see its docstring)"
    )


def test_the_installed_redis_py_is_one_the_pin_allows(repo_root: Path) -> None:
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    [pin] = [r for r in map(Requirement, project["dependencies"]) if r.name == "redis"]
    assert pin.specifier.contains(REDIS_PY), (
        f"redis-py {REDIS_PY} is installed, outside the pin {pin}: "
        "run these tests on it, then widen the pin"
    )


def test_make_connection_takes_no_arguments() -> None:
    params = parameters(ConnectionPool, "make_connection")
    assert list(params) == ["self"], changed(ConnectionPool, "make_connection", str(params))


def test_send_packed_command_takes_a_list_of_chunks() -> None:
    send = internal(AbstractConnection, "send_packed_command")
    assert inspect.iscoroutinefunction(send), changed(
        AbstractConnection, "send_packed_command", "no longer a coroutine"
    )
    params = list(parameters(AbstractConnection, "send_packed_command").values())
    assert params[1].kind in (params[1].POSITIONAL_ONLY, params[1].POSITIONAL_OR_KEYWORD), changed(
        AbstractConnection, "send_packed_command", "the command is not its first argument"
    )
    assert all(p.default is not p.empty for p in params[2:]), changed(
        AbstractConnection, "send_packed_command", "it requires more than the command"
    )


def test_read_response_and_disconnect_take_what_we_pass() -> None:
    for name in ("read_response", "disconnect"):
        method = internal(AbstractConnection, name)
        assert inspect.iscoroutinefunction(method), changed(
            AbstractConnection, name, "no longer a coroutine"
        )
        required = [
            p.name
            for p in parameters(AbstractConnection, name).values()
            if p.name != "self" and p.default is p.empty
        ]
        assert required == [], changed(AbstractConnection, name, f"it requires {required}")
    assert "nowait" in parameters(AbstractConnection, "disconnect"), changed(
        AbstractConnection, "disconnect", "no `nowait` keyword"
    )
    assert issubclass(NoScriptError, ResponseError), (
        f"redis-py {REDIS_PY}: NoScriptError is no longer a ResponseError; the producer "
        "tells a NOSCRIPT reply (reload the script) from the other error replies by it"
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Redis]:
    # As the API makes it: socket timeouts set, hiredis parsing if installed.
    made = create_redis(settings.redis_url, timeout_seconds=0.5)
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
async def connections(client: Redis) -> AsyncIterator[DirectConnections]:
    made = DirectConnections(client.connection_pool)
    try:
        yield made
    finally:
        await made.aclose()


async def test_commands_written_at_once_come_back_in_order_errors_in_their_place(
    connections: DirectConnections, settings: Settings, redis: Redis
) -> None:
    key = f"{settings.redis_key_prefix}wire".encode()
    chunks = [
        pack_command([b"SET", key, b"1"]),
        pack_command([b"EVALSHA", b"0" * 40, b"0"]),  # NOSCRIPT: an error reply
        pack_command([b"INCRBY", key, b"41"]),
        pack_command([b"XADD", key, b"*", b"f", b"v"]),  # WRONGTYPE
        pack_command([b"GET", key]),
    ]
    replies = await connections.exchange(chunks, len(chunks))
    assert len(replies) == 5, "read_response: one reply per command expected"
    assert replies[0] in (True, b"OK", "OK"), f"send_packed_command/read_response: {replies}"
    assert isinstance(replies[1], NoScriptError), f"read_response: NOSCRIPT gave {replies[1]!r}"
    assert replies[2] == 42, f"read_response: out of step after an error reply: {replies}"
    assert isinstance(replies[3], ResponseError), f"read_response: WRONGTYPE gave {replies[3]!r}"
    assert replies[4] == b"42", f"read_response: out of step after an error reply: {replies}"
    # The same connection serves the next exchange, still in step.
    assert await connections.exchange([pack_command([b"PING"])], 1) in ([True], [b"PONG"])
    assert await redis.get(key) == b"42"


async def test_the_connection_is_ours_not_the_clients_pool(
    connections: DirectConnections, client: Redis
) -> None:
    replies = await connections.exchange([pack_command([b"CLIENT", b"ID"])], 1)
    ours = replies[0]
    assert await client.client_id() != ours, (
        "ConnectionPool.make_connection: the connection came from the pool's own"
    )
    await client.ping()  # the client's pool is untouched and works beside it


async def test_a_connection_is_kept_between_exchanges_and_dropped_when_out_of_step(
    connections: DirectConnections,
) -> None:
    async def connection_id() -> int:
        [reply] = await connections.exchange([pack_command([b"CLIENT", b"ID"])], 1)
        return int(reply)

    kept = await connection_id()
    assert await connection_id() == kept, "the connection was not kept for the next exchange"
    # Two replies awaited for one command: the read times out (socket timeout)
    # and the connection, out of step, is disconnected and not kept.
    with pytest.raises((RedisTimeoutError, TimeoutError)):
        await connections.exchange([pack_command([b"PING"])], 2)
    assert await connection_id() != kept, (
        "AbstractConnection.disconnect(nowait=True): a connection out of step was kept"
    )


async def test_the_producer_reloads_its_script_after_redis_forgot_it(
    client: Redis, settings: Settings, redis: Redis
) -> None:
    producer = StreamProducer(
        client, stream_key=settings.stream_key, backlog_key=settings.backlog_key
    )
    try:
        fields = {b"v": b"1", b"n": b"2", b"events": b"[]"}
        first = await producer.append_fields(fields, events=2, rate_limit=RateLimit.unlimited())
        await redis.script_flush()  # a restarted Redis has no scripts
        together = await asyncio.gather(
            *(
                producer.append_fields(fields, events=2, rate_limit=RateLimit.unlimited())
                for _ in range(5)
            )
        )
    finally:
        await producer.aclose()
    assert first.backlog == 2
    assert sorted(a.backlog for a in together) == [4, 6, 8, 10, 12]
    assert await redis.xlen(settings.stream_key) == 6
