"""A response's head goes out in the same write as its body (api.response_writes).

Driven through uvicorn's own `RequestResponseCycle`, so an upgrade that
changes how it writes (the order of its flags and writes) fails here. The
transport below records what reaches the socket; the protocol around it is
exercised against a real server by the security and equivalence tests.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from labs_analytics.api.response_writes import HeadWithBodyTransport


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def cycle_writing_to(
    transport: RecordingTransport, *, expect_100: bool = False, method: str = "POST"
) -> RequestResponseCycle:
    cycle = RequestResponseCycle(
        scope={"type": "http", "method": method, "http_version": "1.1"},  # type: ignore[typeddict-item]
        transport=transport,
        flow=FlowControl(transport),
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=expect_100,
        keep_alive=True,
        on_response=lambda: None,
    )
    cycle.transport = HeadWithBodyTransport(transport, cycle)  # type: ignore[assignment]
    return cycle


async def test_a_response_with_a_length_is_one_write() -> None:
    transport = RecordingTransport()
    cycle = cycle_writing_to(transport)
    await cycle.send(
        {"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"2")]}
    )
    assert transport.writes == []
    await cycle.send({"type": "http.response.body", "body": b"{}"})
    assert transport.writes == [b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}"]
    assert cycle.response_complete


async def test_a_streamed_response_writes_its_head_at_once() -> None:
    transport = RecordingTransport()
    cycle = cycle_writing_to(transport)
    await cycle.send({"type": "http.response.start", "status": 200, "headers": []})
    assert len(transport.writes) == 1
    assert transport.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n")
    await cycle.send({"type": "http.response.body", "body": b"row\n", "more_body": True})
    await cycle.send({"type": "http.response.body", "body": b""})
    assert transport.writes[1:] == [b"4\r\nrow\n\r\n", b"0\r\n\r\n"]


async def test_an_empty_body_is_not_held() -> None:
    transport = RecordingTransport()
    cycle = cycle_writing_to(transport)
    await cycle.send(
        {"type": "http.response.start", "status": 204, "headers": [(b"content-length", b"0")]}
    )
    assert transport.writes == [b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"]


async def test_a_100_continue_goes_out_before_the_answer_and_alone() -> None:
    transport = RecordingTransport()
    cycle = cycle_writing_to(transport, expect_100=True)
    cycle.more_body = False  # the whole body has arrived, as the protocol signals it
    cycle.message_event.set()
    await cycle.receive()
    await cycle.send(
        {"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"2")]}
    )
    await cycle.send({"type": "http.response.body", "body": b"{}"})
    assert transport.writes == [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}",
    ]


async def test_a_held_head_is_written_before_the_connection_closes() -> None:
    """An app that fails between start and body: uvicorn closes the connection."""
    transport = RecordingTransport()
    cycle = cycle_writing_to(transport)

    async def failing_app(scope: object, receive: object, send: object) -> None:
        await cycle.send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"9")]}
        )
        raise RuntimeError("after the start")

    await cycle.run_asgi(failing_app)
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"]
    assert transport.closed


async def test_a_head_answer_is_written_at_once() -> None:
    """uvicorn writes no body for HEAD: a held head would never go out."""
    transport = RecordingTransport()
    cycle = cycle_writing_to(transport, method="HEAD")
    await cycle.send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"15")]}
    )
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n"]
    await cycle.send({"type": "http.response.body", "body": b'{"status":"ok"}'})
    assert len(transport.writes) == 1
    assert cycle.response_complete
