"""Attacks on the HTTP layer itself, against a real `labs-analytics serve`.

Each test opens raw sockets the way an attacker would: heads that never end,
heads and bodies that never finish, connections that never speak, more
connections than the process may hold. The server must cut each one off
and keep serving everybody else.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from labs_analytics.settings import Settings
from tests.helpers import ServeProcess, create_key, make_event, serve_process, wait_for_events
from tests.security.connection import (
    close,
    closed_by_server,
    connect,
    post_head,
    read_response,
    send_quietly,
)

HEADER_LIMIT = 8 * 1024
TIMEOUT = 1.0
CONNECTION_CAP = 64
# How late past TIMEOUT the server may cut a connection off: its deadline is
# checked by a busy process on what may be a busy machine. Only a connection
# that outlives its deadline outright (a slow drip: 25 s) goes past it.
SLACK = 10.0


@pytest.fixture
async def key(settings: Settings, db: asyncpg.Connection) -> str:
    del db  # requested for its clean tables
    return await create_key(settings)


@pytest.fixture
def server(settings: Settings, key: str, tmp_path: Path) -> Iterator[ServeProcess]:
    del key  # created before the server starts, so its key cache has it
    with serve_process(
        settings,
        tmp_path,
        MAX_HEADER_BYTES=str(HEADER_LIMIT),
        HEADER_TIMEOUT_SECONDS=str(TIMEOUT),
        BODY_TIMEOUT_SECONDS=str(TIMEOUT),
        MAX_CONNECTIONS=str(CONNECTION_CAP),
    ) as running:
        yield running


def body_of(n: int = 1) -> bytes:
    return orjson.dumps({"events": [make_event() for _ in range(n)]})


def quiet_client_latencies(server: ServeProcess, key: str, requests: int) -> list[float]:
    """A well-behaved client on one keep-alive connection: every request must get 202."""
    latencies = []
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for _ in range(requests):
            started = time.perf_counter()
            response = client.post(
                "/v1/events", content=body_of(), headers={"Authorization": f"Bearer {key}"}
            )
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 202, response.text
    return latencies


# --- head size ------------------------------------------------------------------


def test_an_endless_header_is_cut_off_with_431_at_the_limit(server: ServeProcess) -> None:
    sock = connect(server.base_url)
    try:
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nX-Endless: ")
        sent = 0
        while sent < 4 * HEADER_LIMIT and send_quietly(sock, b"a" * 1024):
            sent += 1024
            time.sleep(0.001)  # a stream, not one write: each read grows the head
        response = read_response(sock)
        assert response is not None, "the server closed without saying why"
        assert response.status == 431
        assert orjson.loads(response.body)["error"] == "headers_too_large"
        assert closed_by_server(sock, within=2)
    finally:
        close(sock)


def test_a_whole_head_over_the_limit_in_one_write_gets_431(server: ServeProcess, key: str) -> None:
    sock = connect(server.base_url)
    try:
        sock.sendall(post_head(key, content_length=2, extra=f"X-Big: {'b' * HEADER_LIMIT}\r\n"))
        send_quietly(sock, b"{}")
        response = read_response(sock)
        assert response is not None
        assert response.status == 431
    finally:
        close(sock)


def test_head_and_get_answers_follow_each_other_on_one_connection(server: ServeProcess) -> None:
    """Each answer's head goes out with its body in one write (api.response_writes);
    a HEAD answer has no body, and must not wait for one (a GET-only route
    answers HEAD with a 405 that declares a body's length)."""
    with httpx.Client(base_url=server.base_url, timeout=5) as client:
        for _ in range(3):
            head = client.head("/healthz")
            assert head.status_code == 405
            assert int(head.headers["content-length"]) > 0
            assert head.content == b""
            got = client.get("/healthz")
            assert got.status_code == 200
            assert got.json()["status"] == "ok"


def test_a_head_just_under_the_limit_is_served(server: ServeProcess, key: str) -> None:
    body = body_of()
    padding = "p" * (HEADER_LIMIT - 512)
    response = httpx.post(
        f"{server.base_url}/v1/events",
        content=body,
        headers={"Authorization": f"Bearer {key}", "X-Padding": padding},
    )
    assert response.status_code == 202


def test_endless_headers_do_not_slow_other_clients(server: ServeProcess, key: str) -> None:
    baseline = statistics.median(quiet_client_latencies(server, key, 30))
    stop = threading.Event()
    attacking = [threading.Event() for _ in range(4)]

    def attack(underway: threading.Event) -> None:
        # Reconnects as soon as it is cut off, for as long as the test runs.
        while not stop.is_set():
            sock = connect(server.base_url)
            try:
                sock.sendall(b"GET / HTTP/1.1\r\nX-Endless: ")
                while not stop.is_set() and send_quietly(sock, b"a" * 16384):
                    underway.set()  # a head is growing on the server
            finally:
                close(sock)

    attackers = [threading.Thread(target=attack, args=(e,), daemon=True) for e in attacking]
    for thread in attackers:
        thread.start()
    try:
        assert all(underway.wait(timeout=30) for underway in attacking), "an attack never began"
        attacked = statistics.median(quiet_client_latencies(server, key, 30))
    finally:
        stop.set()
        for thread in attackers:
            thread.join(timeout=5)
    # Before the bound, one such socket took a quiet client's p50 from 2 ms to
    # 9 s. How much slower the quiet client gets is `make attacks`'s measure
    # (stress/attacks.py): here a ceiling that only that kind of stall crosses,
    # however busy the machine (the attackers' threads share it too).
    assert attacked < 2.0, (baseline, attacked)


# --- time ---------------------------------------------------------------------------


def test_a_connection_that_never_speaks_is_closed(server: ServeProcess) -> None:
    sock = connect(server.base_url)
    try:
        assert closed_by_server(sock, within=TIMEOUT + SLACK)
    finally:
        close(sock)


@pytest.mark.parametrize(
    "partial",
    [b"POST /v1/eve", b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nAuthoriz"],
    ids=["request line", "headers"],
)
def test_a_head_that_stops_halfway_gets_408(server: ServeProcess, partial: bytes) -> None:
    sock = connect(server.base_url)
    try:
        sock.sendall(partial)
        response = read_response(sock)
        assert response is not None
        assert response.status == 408
        assert closed_by_server(sock, within=2)
    finally:
        close(sock)


def test_a_head_dripped_byte_by_byte_cannot_outlast_the_deadline(server: ServeProcess) -> None:
    sock = connect(server.base_url)
    started = time.monotonic()
    try:
        head = b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\n" + b"X: y\r\n" * 200
        # A byte every 20 ms: the whole head would take 25 s or more, each byte "activity".
        assert len(head) * 0.02 > 2 * (TIMEOUT + SLACK)
        for byte in head:
            if not send_quietly(sock, bytes([byte])):
                break
            time.sleep(0.02)
            if time.monotonic() - started > TIMEOUT + SLACK:
                break
        assert closed_by_server(sock, within=1)
        assert time.monotonic() - started < TIMEOUT + SLACK
    finally:
        close(sock)


def test_a_body_that_never_arrives_is_cut_off(server: ServeProcess, key: str) -> None:
    sock = connect(server.base_url)
    try:
        sock.sendall(post_head(key, content_length=100) + b'{"name": "a')
        assert closed_by_server(sock, within=TIMEOUT + SLACK)
    finally:
        close(sock)


def test_a_keep_alive_connection_serves_requests_beyond_the_head_deadline(
    server: ServeProcess, key: str
) -> None:
    # The head deadline is per request, not per connection.
    with httpx.Client(base_url=server.base_url) as client:
        for _ in range(3):
            response = client.post(
                "/v1/events", content=body_of(), headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == 202
            time.sleep(TIMEOUT * 0.6)


def test_pipelined_requests_are_all_answered(server: ServeProcess, key: str) -> None:
    body = body_of()
    sock = connect(server.base_url)
    try:
        sock.sendall((post_head(key, content_length=len(body)) + body) * 3)
        statuses = []
        for _ in range(3):
            response = read_response(sock)
            assert response is not None
            statuses.append(response.status)
        assert statuses == [202, 202, 202]
    finally:
        close(sock)


# --- connections ----------------------------------------------------------------------


def test_idle_connections_beyond_the_cap_do_not_lock_out_new_clients(
    server: ServeProcess, key: str
) -> None:
    idle = [connect(server.base_url) for _ in range(CONNECTION_CAP * 3)]
    try:
        half_open = idle[-1]
        half_open.sendall(b"POST /v1/ev")
        response = httpx.post(
            f"{server.base_url}/v1/events",
            content=body_of(),
            headers={"Authorization": f"Bearer {key}"},
            timeout=5,
        )
        assert response.status_code == 202
        # The oldest silent ones made room: the server holds at most its cap.
        closed = sum(closed_by_server(sock, within=0.05) for sock in idle[:CONNECTION_CAP])
        assert closed >= CONNECTION_CAP - 1
    finally:
        for sock in idle:
            close(sock)


# --- protocol corners -----------------------------------------------------------------


async def test_an_h2c_upgrade_request_is_served_as_http1_with_its_body(
    server: ServeProcess, key: str, db: asyncpg.Connection
) -> None:
    # What `curl --http2 http://…` sends: the server may ignore the upgrade.
    body = body_of(2)
    extra = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQ\r\n"
    sock = connect(server.base_url)
    try:
        sock.sendall(post_head(key, content_length=len(body), extra=extra) + body)
        response = read_response(sock)
        assert response is not None
        assert response.status == 202, response.body
        assert orjson.loads(response.body)["accepted"] == 2
        assert "upgrade" not in response.headers
    finally:
        close(sock)
    await wait_for_events(db, 2)


def test_connect_is_refused(server: ServeProcess) -> None:
    sock = connect(server.base_url)
    try:
        sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        response = read_response(sock)
        assert response is not None
        assert response.status == 400
    finally:
        close(sock)


def test_a_trailing_slash_is_not_redirected(server: ServeProcess, key: str) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/events/",
        content=body_of(),
        headers={"Authorization": f"Bearer {key}", "Host": "evil.example"},
    )
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.json()["error"] == "not_found"


# --- what an attacker tries next ------------------------------------------------------


def test_a_request_with_both_content_length_and_chunked_is_refused(
    server: ServeProcess, key: str
) -> None:
    # The classic smuggling shape: a proxy and we must never disagree on where
    # the body ends, so the ambiguous request is refused outright.
    body = body_of()
    smuggled = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    chunk = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    sock = connect(server.base_url)
    try:
        sock.sendall(
            post_head(key, content_length=len(chunk), extra="Transfer-Encoding: chunked\r\n")
            + chunk
            + smuggled
        )
        response = read_response(sock)
        assert response is not None
        assert response.status == 400
        assert closed_by_server(sock, within=2)
    finally:
        close(sock)


def test_thousands_of_tiny_headers_are_bounded_like_one_big_one(server: ServeProcess) -> None:
    sock = connect(server.base_url)
    try:
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        for _ in range(2 * HEADER_LIMIT // 50):  # 8 headers, ~60 bytes, a write
            if not send_quietly(sock, b"".join(b"h%d: v\r\n" % i for i in range(8))):
                break
        response = read_response(sock)
        assert response is not None
        assert response.status == 431
    finally:
        close(sock)


def test_an_oversized_body_announced_with_expect_continue_is_refused_unread(
    server: ServeProcess, key: str
) -> None:
    sock = connect(server.base_url)
    try:
        sock.sendall(
            post_head(key, content_length=50 * 1024 * 1024, extra="Expect: 100-continue\r\n")
        )
        response = read_response(sock)
        assert response is not None
        assert response.status == 413  # not "100 Continue": the client never sends the 50 MB
    finally:
        close(sock)


def test_an_endless_chunked_body_is_cut_at_the_body_limit(server: ServeProcess, key: str) -> None:
    sock = connect(server.base_url)
    try:
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + key.encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"%x\r\n%b\r\n" % (65536, b" " * 65536)
        for _ in range(64):  # 4 MiB offered against a 1 MiB limit
            if not send_quietly(sock, piece):
                break
        response = read_response(sock)
        assert response is not None
        assert response.status == 413
    finally:
        close(sock)


def test_the_bounds_hold_in_every_worker_process(
    settings: Settings, key: str, tmp_path: Path
) -> None:
    # uvicorn hands the protocol class to worker processes it spawns.
    with serve_process(
        settings, tmp_path, "--workers", "2", MAX_HEADER_BYTES=str(HEADER_LIMIT)
    ) as running:
        for _ in range(6):  # the kernel spreads connections over both workers
            sock = connect(running.base_url)
            try:
                sock.sendall(post_head(key, content_length=2, extra=f"X: {'b' * HEADER_LIMIT}\r\n"))
                response = read_response(sock)
                assert response is not None
                assert response.status == 431
            finally:
                close(sock)
        response = httpx.post(
            f"{running.base_url}/v1/events",
            content=body_of(),
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 202


def test_a_client_that_sends_its_whole_body_first_still_reads_an_early_refusal(
    server: ServeProcess,
) -> None:
    # The server answers 401 before reading the body and will not parse it; a
    # client (like httpx) that writes the whole body before reading must still
    # get the answer, not a reset.
    body = b'{"events": [' + b",".join([orjson.dumps(make_event())] * 4000) + b"]}"
    assert 512 * 1024 < len(body) < 1024 * 1024
    for _ in range(3):
        response = httpx.post(
            f"{server.base_url}/v1/events",
            content=body,
            headers={"Authorization": "Bearer lak_000000000000_" + "x" * 43},
            timeout=10,
        )
        assert response.status_code == 401


def test_a_second_request_with_an_oversized_head_on_a_kept_alive_connection_gets_431(
    server: ServeProcess, key: str
) -> None:
    body = body_of()
    sock = connect(server.base_url)
    try:
        sock.sendall(post_head(key, content_length=len(body)) + body)
        first = read_response(sock)
        assert first is not None
        assert first.status == 202
        sock.sendall(post_head(key, content_length=2, extra=f"X-Big: {'b' * HEADER_LIMIT}\r\n"))
        second = read_response(sock)
        assert second is not None
        assert second.status == 431
    finally:
        close(sock)
