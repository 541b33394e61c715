"""Reading a request body without ever holding more than the limit.

The limit applies to what we read off the socket and again to what gzip
expands to, so neither a huge upload nor a small zip bomb gets buffered.
Decompression costs time linear in the body: at most ``MAX_GZIP_MEMBERS``
gzip members (a body of 52,000 empty members is refused, not walked), and
the input is fed to zlib in chunks of ``GZIP_INPUT_CHUNK`` bytes, so what
zlib copies back at the end of each member (``unused_data``) is never more
than one chunk.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import NamedTuple

from starlette.types import Receive

from labs_analytics.errors import MalformedBody, PayloadTooLarge, UnsupportedEncoding
from labs_analytics.ingest.limits import RequestMeter

# A client has no reason to send more than one member (the SDK sends one);
# concatenated files make a few. Each member costs a decompressor.
MAX_GZIP_MEMBERS = 16
GZIP_INPUT_CHUNK = 16 * 1024

_WANTED = {
    b"authorization": "authorization",
    b"content-length": "content_length",
    b"content-encoding": "content_encoding",
    b"origin": "origin",
}


class IngestHeaders(NamedTuple):
    """The request headers ingest reads, taken straight from the ASGI scope.

    A NamedTuple: built on every request, and cheaper to build than a frozen dataclass.
    """

    authorization: str | None = None
    content_length: str | None = None
    content_encoding: str | None = None
    origin: str | None = None

    @classmethod
    def from_scope(cls, headers: Iterable[tuple[bytes, bytes]]) -> IngestHeaders:
        # ASGI servers lower-case header names; the first of repeated ones wins,
        # as with Starlette's ``Headers.get``.
        found: dict[str, str] = {}
        for name, value in headers:
            field = _WANTED.get(name)
            if field is not None and field not in found:
                found[field] = value.decode("latin-1")
        return cls(**found)


async def read_body(
    receive: Receive, headers: IngestHeaders, *, limit: int, meter: RequestMeter | None = None
) -> bytes:
    """The request body off an ASGI ``receive``, decompressed, never more than ``limit``.

    ``meter``, if given, records how much was read and decompressed, even when
    the body is refused: refused work is charged to the key.
    """
    meter = meter if meter is not None else RequestMeter()
    encoding = (headers.content_encoding or "").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip"):
        # Refused before reading: nothing of the body is worth our time.
        raise UnsupportedEncoding(
            f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding"
        )
    declared = headers.content_length
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")

    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise MalformedBody("the client disconnected before sending the whole body")
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            meter.received = size
            if size > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if encoding in ("", "identity"):
        return raw
    return gunzip(raw, limit=limit, meter=meter)


def gunzip(data: bytes, *, limit: int, meter: RequestMeter | None = None) -> bytes:
    """Decompress gzip, refusing output beyond ``limit`` and more than ``MAX_GZIP_MEMBERS`` members.

    Linear in ``data``: each input byte is fed to zlib once, plus at most one
    chunk per member handed back as ``unused_data`` when a member ends.
    """
    out = bytearray()
    view = memoryview(data)
    offset = 0
    members = 0
    while True:
        members += 1
        if members > MAX_GZIP_MEMBERS:
            raise MalformedBody(
                f"gzip body has more than {MAX_GZIP_MEMBERS} members; send one gzip stream"
            )
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        while not decompressor.eof:
            if offset >= len(view):
                raise MalformedBody("gzip body is truncated")
            chunk = view[offset : offset + GZIP_INPUT_CHUNK]
            offset += len(chunk)
            try:
                out += decompressor.decompress(chunk, limit + 1 - len(out))
            except zlib.error as exc:
                raise MalformedBody(f"body is not valid gzip: {exc}") from exc
            if meter is not None:
                meter.decompressed = len(out)
            if len(out) > limit or decompressor.unconsumed_tail:
                raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
        # What followed the member's end in the last chunk starts the next member.
        offset -= len(decompressor.unused_data)
        if offset >= len(view):
            return bytes(out)
