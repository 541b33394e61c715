"""Reading a request body without ever holding more than the limit.

The limit applies to what we read off the socket and again to what gzip
expands to, so neither a huge upload nor a small zip bomb gets buffered.
"""

from __future__ import annotations

import zlib

from starlette.requests import ClientDisconnect, Request

from labs_analytics.errors import MalformedBody, PayloadTooLarge, UnsupportedEncoding


async def read_body(request: Request, *, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")

    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise MalformedBody("the client disconnected before sending the whole body") from exc
    raw = b"".join(chunks)

    encoding = request.headers.get("content-encoding", "").strip().lower()
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
