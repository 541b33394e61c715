"""Raw sockets against a real `serve`: what an attacker sends is not always HTTP."""

from __future__ import annotations

import contextlib
import socket
import time
import weakref
from dataclasses import dataclass
from urllib.parse import urlsplit


def address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def connect(base_url: str, *, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(address(base_url), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


# Bytes read past the end of a response: the start of the next one, when the
# server answers pipelined requests back to back (one recv may hold both).
_leftover: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket) -> RawResponse | None:
    """One HTTP/1.1 response with a Content-Length; None if the server closed first."""
    data = _leftover.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = _recv(sock)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = _recv(sock)
        if not chunk:
            break
        body += chunk
    if len(body) > length:
        _leftover[sock] = body[length:]
    return RawResponse(int(status_line.split()[1]), headers, body[:length])


def closed_by_server(sock: socket.socket, *, within: float) -> bool:
    """True if the server closes the connection within ``within`` seconds."""
    deadline = time.monotonic() + within
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
        if not chunk:
            return True
    return False


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send, as an attacker would, not caring whether the server has hung up; False if it has."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def post_head(key: str, *, content_length: int, extra: str = "") -> bytes:
    return (
        f"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {content_length}\r\n{extra}\r\n"
    ).encode()


def close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
