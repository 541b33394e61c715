"""Reading a request body: size limits before and after gzip, and what is refused."""

from __future__ import annotations

import gzip
import time
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from labs_analytics.errors import MalformedBody, PayloadTooLarge, UnsupportedEncoding
from labs_analytics.ingest import body as body_module
from labs_analytics.ingest.body import (
    GZIP_INPUT_CHUNK,
    MAX_GZIP_MEMBERS,
    IngestHeaders,
    gunzip,
    read_body,
)
from labs_analytics.ingest.limits import RequestMeter

MiB = 1024 * 1024

Message = dict[str, Any]


class Receiver:
    """An ASGI ``receive`` that hands out body chunks and counts how many were asked for."""

    def __init__(self, chunks: Sequence[bytes], *, disconnect: bool = False) -> None:
        self.messages: list[Message] = [
            {"type": "http.request", "body": chunk, "more_body": disconnect or i < len(chunks) - 1}
            for i, chunk in enumerate(chunks)
        ]
        if disconnect:
            self.messages.append({"type": "http.disconnect"})
        self.calls = 0

    async def __call__(self) -> Message:
        self.calls += 1
        return self.messages.pop(0)


async def read(
    receive: Callable[[], Awaitable[Message]],
    headers: dict[str, str] | None = None,
    *,
    limit: int,
) -> bytes:
    raw_headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in (headers or {}).items()
    ]
    return await read_body(receive, IngestHeaders.from_scope(raw_headers), limit=limit)


# --- headers -----------------------------------------------------------------


def test_ingest_headers_are_read_from_the_scope_and_the_first_repeat_wins() -> None:
    headers = IngestHeaders.from_scope(
        [
            (b"authorization", b"Bearer lak_first"),
            (b"content-encoding", b"gzip"),
            (b"authorization", b"Bearer lak_second"),
            (b"x-other", b"ignored"),
        ]
    )
    assert headers == IngestHeaders(authorization="Bearer lak_first", content_encoding="gzip")


def test_missing_ingest_headers_are_none() -> None:
    assert IngestHeaders.from_scope([]) == IngestHeaders()


# --- gunzip -------------------------------------------------------------------


def test_gunzip_returns_what_gzip_compressed() -> None:
    data = b'{"name": "post.click"}' * 100
    assert gunzip(gzip.compress(data), limit=MiB) == data


def test_gunzip_of_an_empty_payload_is_empty() -> None:
    assert gunzip(gzip.compress(b""), limit=10) == b""


def test_gunzip_joins_every_member_of_a_multi_member_stream() -> None:
    body = gzip.compress(b"first,") + gzip.compress(b"second,") + gzip.compress(b"third")
    assert gunzip(body, limit=MiB) == b"first,second,third"


def test_gunzip_output_exactly_at_the_limit_is_accepted() -> None:
    data = b"x" * 1000
    assert gunzip(gzip.compress(data), limit=1000) == data


def test_gunzip_output_one_byte_over_the_limit_is_refused() -> None:
    with pytest.raises(PayloadTooLarge, match="decompressed body exceeds the limit of 1000 bytes"):
        gunzip(gzip.compress(b"x" * 1001), limit=1000)


def test_gunzip_limit_applies_to_all_members_together() -> None:
    body = gzip.compress(b"x" * 600) + gzip.compress(b"y" * 600)
    with pytest.raises(PayloadTooLarge):
        gunzip(body, limit=1000)


def test_gunzip_refuses_a_zip_bomb_without_expanding_it() -> None:
    bomb = gzip.compress(bytes(10 * MiB))
    assert len(bomb) < 64 * 1024

    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            gunzip(bomb, limit=MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Never more than a few copies of the limit, far from the 10 MiB it would expand to.
    assert peak < 4 * MiB


def test_gunzip_refuses_data_that_is_not_gzip() -> None:
    with pytest.raises(MalformedBody, match="body is not valid gzip"):
        gunzip(b'{"name": "post.click"}', limit=MiB)


def test_gunzip_refuses_an_empty_body() -> None:
    with pytest.raises(MalformedBody):
        gunzip(b"", limit=MiB)


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda b: b[:-4], id="trailer-cut"),
        pytest.param(lambda b: b[: len(b) // 2], id="cut-in-half"),
        pytest.param(lambda b: b[:10], id="header-only"),
    ],
)
def test_gunzip_refuses_a_truncated_stream(cut: Callable[[bytes], bytes]) -> None:
    body = gzip.compress(b"some event data " * 200)
    with pytest.raises(MalformedBody, match="truncated"):
        gunzip(cut(body), limit=MiB)


def test_gunzip_refuses_a_corrupted_checksum() -> None:
    body = bytearray(gzip.compress(b"some event data"))
    body[-8] ^= 0xFF  # first byte of the CRC-32 in the trailer
    with pytest.raises(MalformedBody):
        gunzip(bytes(body), limit=MiB)


def test_gunzip_refuses_garbage_after_a_valid_member() -> None:
    with pytest.raises(MalformedBody):
        gunzip(gzip.compress(b"ok") + b"trailing garbage", limit=MiB)


# --- gzip members: linear, bounded ----------------------------------------------


class FeedLog:
    """Wraps zlib's decompressors to record how gunzip feeds them."""

    def __init__(self) -> None:
        self.decompressors = 0
        self.fed: list[int] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = zlib.decompressobj
        log = self

        class Recording:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                log.decompressors += 1
                self._inner = real(*args, **kwargs)

            def decompress(self, data: Any, max_length: int = 0) -> bytes:
                log.fed.append(len(data))
                return self._inner.decompress(data, max_length)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._inner, name)

        monkeypatch.setattr(body_module.zlib, "decompressobj", Recording)


def member_bomb(members: int = 52_000) -> bytes:
    """One tiny event, then empty gzip members: 1 MB that once cost 0.7 s of CPU."""
    return gzip.compress(b'{"name": "tiny"}') + gzip.compress(b"") * members


def test_a_body_of_52000_gzip_members_is_refused_after_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feeds = FeedLog()
    feeds.install(monkeypatch)
    bomb = member_bomb()
    with pytest.raises(MalformedBody, match=f"more than {MAX_GZIP_MEMBERS} members"):
        gunzip(bomb, limit=MiB)
    # The mechanism, not a timing: one decompressor per member up to the cap,
    # each fed chunks of bounded size, so the work stops long before the end.
    assert feeds.decompressors == MAX_GZIP_MEMBERS
    assert max(feeds.fed) <= GZIP_INPUT_CHUNK
    assert sum(feeds.fed) <= MAX_GZIP_MEMBERS * GZIP_INPUT_CHUNK


def test_each_input_byte_is_fed_once_plus_at_most_a_chunk_per_member(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feeds = FeedLog()
    feeds.install(monkeypatch)
    # Members larger than a chunk, so ends fall inside chunks: the rest of the
    # chunk is handed back and fed again, never the rest of the body.
    members = [gzip.compress(bytes(range(256)) * 400, compresslevel=0) for _ in range(8)]
    data = b"".join(members)
    assert gunzip(data, limit=10 * MiB) == (bytes(range(256)) * 400) * 8
    assert feeds.decompressors == 8
    assert max(feeds.fed) <= GZIP_INPUT_CHUNK
    assert sum(feeds.fed) <= len(data) + 8 * GZIP_INPUT_CHUNK


def test_the_member_bomb_costs_little_cpu() -> None:
    bomb = member_bomb()
    started = time.process_time()
    with pytest.raises(MalformedBody):
        gunzip(bomb, limit=MiB)
    # Was 0.7 s; now a handful of members. Generous for a shared machine.
    assert time.process_time() - started < 0.05


def test_up_to_the_member_cap_every_member_is_read() -> None:
    parts = [f"part{i},".encode() for i in range(MAX_GZIP_MEMBERS)]
    data = b"".join(gzip.compress(part) for part in parts)
    assert gunzip(data, limit=MiB) == b"".join(parts)
    with pytest.raises(MalformedBody):
        gunzip(data + gzip.compress(b"one more"), limit=MiB)


def test_a_large_single_member_is_read_across_many_chunks() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, 64 chunks of input at level 0
    assert gunzip(gzip.compress(data, compresslevel=0), limit=MiB) == data


def test_gunzip_records_how_much_it_produced_even_when_refusing() -> None:
    meter = RequestMeter()
    with pytest.raises(PayloadTooLarge):
        gunzip(gzip.compress(bytes(10 * MiB)), limit=MiB, meter=meter)
    assert meter.decompressed == MiB + 1


# --- read_body ----------------------------------------------------------------


async def test_body_is_read_across_chunks() -> None:
    receive = Receiver([b'{"name":', b' "a"}'])
    assert await read(receive, limit=MiB) == b'{"name": "a"}'


async def test_empty_body_is_read_as_empty_bytes() -> None:
    assert await read(Receiver([b""]), limit=MiB) == b""


async def test_body_exactly_at_the_limit_is_accepted() -> None:
    receive = Receiver([b"x" * 50, b"x" * 50])
    assert await read(receive, limit=100) == b"x" * 100


async def test_declared_content_length_over_the_limit_is_refused_before_reading() -> None:
    receive = Receiver([b"x" * 10])
    with pytest.raises(PayloadTooLarge, match="body of 101 bytes exceeds the limit of 100 bytes"):
        await read(receive, {"Content-Length": "101"}, limit=100)
    assert receive.calls == 0


async def test_streamed_body_over_the_limit_is_refused_without_reading_the_rest() -> None:
    receive = Receiver([b"x" * 400] * 5)
    with pytest.raises(PayloadTooLarge, match="body exceeds the limit of 1000 bytes"):
        await read(receive, limit=1000)
    assert receive.calls == 3


async def test_body_longer_than_its_declared_content_length_is_still_limited() -> None:
    receive = Receiver([b"x" * 400] * 5)
    with pytest.raises(PayloadTooLarge):
        await read(receive, {"Content-Length": "10"}, limit=1000)


async def test_unparseable_content_length_is_ignored_and_the_stream_limit_applies() -> None:
    assert await read(Receiver([b"abc"]), {"Content-Length": "lots"}, limit=100) == b"abc"


async def test_client_disconnecting_mid_body_is_a_malformed_body() -> None:
    receive = Receiver([b'{"name":'], disconnect=True)
    with pytest.raises(MalformedBody, match="disconnected"):
        await read(receive, limit=MiB)


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "GZIP", " gzip "])
async def test_gzip_content_encoding_is_decompressed(encoding: str) -> None:
    data = b'{"name": "post.click"}'
    compressed = Receiver([gzip.compress(data)])
    assert await read(compressed, {"Content-Encoding": encoding}, limit=MiB) == data


@pytest.mark.parametrize("encoding", ["identity", "IDENTITY", ""])
async def test_identity_content_encoding_returns_the_body_as_sent(encoding: str) -> None:
    assert await read(Receiver([b"raw"]), {"Content-Encoding": encoding}, limit=MiB) == b"raw"


@pytest.mark.parametrize("encoding", ["br", "deflate", "zstd", "gzip, br"])
async def test_other_content_encodings_are_unsupported_before_reading(encoding: str) -> None:
    receive = Receiver([b"data"])
    with pytest.raises(UnsupportedEncoding, match="send gzip or no encoding") as info:
        await read(receive, {"Content-Encoding": encoding}, limit=MiB)
    assert repr(encoding) in info.value.message
    assert receive.calls == 0


async def test_the_meter_counts_what_was_read_before_a_refusal() -> None:
    meter = RequestMeter()
    receive = Receiver([b"x" * 400] * 5)
    with pytest.raises(PayloadTooLarge):
        await read_body(receive, IngestHeaders(), limit=1000, meter=meter)
    assert meter.received == 1200
    assert meter.rejected_cost() == 2  # KiB, rounded up


async def test_gzip_body_expanding_past_the_limit_is_refused() -> None:
    compressed = gzip.compress(bytes(MiB))
    assert len(compressed) < 10_000
    with pytest.raises(PayloadTooLarge, match="decompressed"):
        await read(Receiver([compressed]), {"Content-Encoding": "gzip"}, limit=10_000)


async def test_invalid_gzip_body_is_malformed() -> None:
    with pytest.raises(MalformedBody):
        await read(Receiver([b"not gzip at all"]), {"Content-Encoding": "gzip"}, limit=MiB)
