"""Reading a request body without ever holding more than the limit.

The limit applies to what we read off the socket and again to what gzip
expands to, so neither a huge upload nor a small zip bomb gets buffered.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import NamedTuple

from starlette.types import Receive

from labs_analytics.errors import MalformedBody, PayloadTooLarge, UnsupportedEncoding

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


async def read_body(receive: Receive, headers: IngestHeaders, *, limit: int) -> bytes:
    """The request body off an ASGI ``receive``, decompressed, never more than ``limit``."""
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
            if size > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)

    encoding = (headers.content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding in ("gzip", "x-gzip"):
        return gunzip(raw, limit=limit)
    raise UnsupportedEncoding(
        f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding"
    )


def gunzip(data: bytes, *, limit: int) -> bytes:
    """Decompress gzip (several members allowed), refusing output beyond ``limit``."""
    out = bytearray()
    remaining = data
    while True:
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += decompressor.decompress(remaining, limit + 1 - len(out))
        except zlib.error as exc:
            raise MalformedBody(f"body is not valid gzip: {exc}") from exc
        if len(out) > limit or decompressor.unconsumed_tail:
            raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
        if not decompressor.eof:
            raise MalformedBody("gzip body is truncated")
        remaining = decompressor.unused_data
        if not remaining:
            return bytes(out)
