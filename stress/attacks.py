"""`make attacks`: a quiet client's latency while hostile clients attack, on its own stack.

Starts embedded PostgreSQL and Redis and one `labs-analytics serve` (one
worker, as `serve` defaults to, held to 1,024 file descriptors), then for
each attack measures a quiet client — one keep-alive connection, one event
per request, every 20 ms, its own key — first alone, then while the attack
runs, and prints the p50 of both and their ratio (target: at most 2x):

  endless-header  4 connections streaming one header value as fast as they can,
                  reconnecting whenever they are cut off
  422-flood       4 clients looping a 6 KB gzip body that expands to 1,000 events
                  with 47,000 validation problems, plus 40 connections that send
                  it and never read the answer
  gzip-members    12 clients looping one tiny event followed by 52,000 empty gzip
                  members (1 MB)
  idle-sockets    1,100 sockets that stay silent, stop halfway through a request
                  line or headers, or declare a 100-byte body and never send it;
                  each reopened as soon as the server closes it

The attackers run at the lowest CPU priority (`nice 19`): on the internet
their CPU would be their own, and on two shared cores at normal priority
they would slow the quiet client by competing for the CPU, not through the
server. `--same-priority` measures that too. The results go to
BENCHMARKS.md, section "Under attack" (the rest is kept).

    make attacks
    .venv/bin/python stress/attacks.py --seconds 10 --only endless-header
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import json
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from benchmark.machine import git_commit  # noqa: E402  (stress/ is this script's folder)

from labs_analytics.embedded import EmbeddedPostgres, EmbeddedRedis, free_port  # noqa: E402
from labs_analytics.storage import migrations  # noqa: E402

BIN = Path(sys.executable).parent
DESCRIPTOR_LIMIT = 1024
QUIET_INTERVAL = 0.02
TARGET_RATIO = 2.0


# --- the stack ------------------------------------------------------------------------


@contextlib.contextmanager
def stack(work: Path) -> Iterator[tuple[str, dict[str, str]]]:
    postgres = EmbeddedPostgres(work / "postgres", database="attacks")
    redis = EmbeddedRedis(work / "redis")
    postgres.start()
    redis.start()
    try:
        migrations.upgrade(postgres.url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
        env.update(
            DATABASE_URL=postgres.url,
            REDIS_URL=redis.url,
            SPOOL_DIR=str(work / "spool"),
            LOG_LEVEL="WARNING",
        )
        port = free_port()
        with (work / "serve.log").open("ab") as log:
            serve = subprocess.Popen(
                [str(BIN / "labs-analytics"), "serve", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_limit_descriptors,
            )
        try:
            base_url = f"http://127.0.0.1:{port}"
            _wait_ready(base_url)
            yield base_url, env
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
    finally:
        redis.stop()
        postgres.stop()


def _limit_descriptors() -> None:
    # The limit the original report ran with: the server must hold within it.
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTOR_LIMIT, DESCRIPTOR_LIMIT))


def _wait_ready(base_url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"serve did not start at {base_url}")


def create_key(env: dict[str, str], product: str) -> str:
    created = subprocess.run(
        [str(BIN / "labs-analytics"), "keys", "create", "--product", product, "--scope", "ingest"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return created.stdout.strip().splitlines()[-1]


# --- the quiet client ----------------------------------------------------------------------


def quiet_p50(base_url: str, key: str, seconds: float) -> tuple[float, int]:
    """p50 latency in ms of a paced, well-behaved client, and how many requests failed."""
    body = json.dumps({"name": "page.view", "user": "u_1", "properties": {"path": "/"}})
    latencies: list[float] = []
    failures = 0
    reasons: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                response = client.post(
                    "/v1/events", content=body, headers={"Authorization": f"Bearer {key}"}
                )
                if response.status_code != 202:
                    failures += 1
                    reason = f"{response.status_code} {response.text[:80]}"
                    reasons[reason] = reasons.get(reason, 0) + 1
            except httpx.HTTPError as exc:
                failures += 1
                reasons[type(exc).__name__] = reasons.get(type(exc).__name__, 0) + 1
            elapsed = time.perf_counter() - started
            latencies.append(elapsed)
            time.sleep(max(0.0, QUIET_INTERVAL - elapsed))
    if reasons:
        print(f"quiet client failures: {reasons}", flush=True)
    return statistics.median(latencies) * 1000, failures


# --- the attackers (each runs in processes of its own) ------------------------------------


def _connect(address: tuple[str, int]) -> socket.socket | None:
    try:
        return socket.create_connection(address, timeout=5)
    except OSError:
        return None


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def endless_header(address: tuple[str, int], _key: str, stop: Any) -> None:
    chunk = b"a" * 16384
    while not stop.is_set():
        sock = _connect(address)
        if sock is None:
            continue
        with sock:
            if _send(sock, b"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Endless: "):
                while not stop.is_set() and _send(sock, chunk):
                    pass


def invalid_batch_body() -> bytes:
    event: dict[str, Any] = {
        "event_id": "not-a-uuid",
        "name": "",
        "user": 1,
        "timestamp": "yesterday",
        "properties": [],
        "context": 1,
        "product": "NOT A PRODUCT",
        **{f"x{i}": 0 for i in range(40)},
    }
    return gzip.compress(json.dumps({"events": [event] * 1000}).encode(), 9)


def _request(key: str, body: bytes, encoding: str = "gzip") -> bytes:
    return (
        f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Encoding: {encoding}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _loop_requests(address: tuple[str, int], request: bytes, stop: Any) -> None:
    while not stop.is_set():
        sock = _connect(address)
        if sock is None:
            continue
        with sock:
            while not stop.is_set() and _send(sock, request):
                if not _read_one_response(sock):
                    break


def _read_one_response(sock: socket.socket) -> bool:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(body) < length:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return False
            body += chunk
    except OSError:
        return False
    return b"connection: close" not in head.lower()


def flood_422(address: tuple[str, int], key: str, stop: Any) -> None:
    _loop_requests(address, _request(key, invalid_batch_body()), stop)


def unread_422(address: tuple[str, int], key: str, stop: Any) -> None:
    # Sends and never reads: the answers pile up in the server unless they are small.
    request = _request(key, invalid_batch_body())
    sockets = []
    while not stop.is_set():
        if len(sockets) < 10:
            sock = _connect(address)
            if sock is not None and _send(sock, request):
                sockets.append(sock)
        stop.wait(0.05)
    for sock in sockets:
        sock.close()


def gzip_members_body() -> bytes:
    event = gzip.compress(b'{"name": "tiny"}')
    empty = gzip.compress(b"")
    return event + empty * 52_000


def gzip_members(address: tuple[str, int], key: str, stop: Any) -> None:
    _loop_requests(address, _request(key, gzip_members_body()), stop)


IDLE_OPENINGS = (
    b"",
    b"POST /v1/ev",
    b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthoriz",
    b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
)


def idle_sockets(address: tuple[str, int], _key: str, stop: Any, count: int = 275) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, max(4096, _hard_limit())))
    held: list[socket.socket] = []
    while not stop.is_set():
        alive = []
        for sock in held:
            try:
                sock.setblocking(False)
                closed = sock.recv(1) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                sock.close()
            else:
                alive.append(sock)
        held = alive
        while len(held) < count and not stop.is_set():
            sock = _connect(address)
            if sock is None:
                break
            _send(sock, IDLE_OPENINGS[len(held) % len(IDLE_OPENINGS)])
            held.append(sock)
        stop.wait(0.2)
    for sock in held:
        sock.close()


def _hard_limit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


@dataclass
class Attack:
    name: str
    workers: list[tuple[Callable[..., None], int]]  # (function, processes)


ATTACKS = [
    Attack("endless-header", [(endless_header, 4)]),
    Attack("422-flood", [(flood_422, 4), (unread_422, 4)]),
    Attack("gzip-members", [(gzip_members, 12)]),
    Attack("idle-sockets", [(idle_sockets, 4)]),
]


def _niced(function: Callable[..., None], niceness: int, *args: Any) -> None:
    # The attackers share this machine's two cores with the server and the
    # quiet client; on the internet their CPU would be their own. At the
    # lowest priority they still send as fast as any spare cycle allows, but
    # what slows the quiet client is the server's work, not theirs.
    os.nice(niceness)
    function(*args)


@contextlib.contextmanager
def attacking(attack: Attack, base_url: str, key: str, niceness: int) -> Iterator[None]:
    host, port = base_url.removeprefix("http://").split(":")
    stop = multiprocessing.Event()
    processes = [
        multiprocessing.Process(
            target=_niced, args=(function, niceness, (host, int(port)), key, stop), daemon=True
        )
        for function, count in attack.workers
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    try:
        time.sleep(1.0)  # let it reach its steady state
        yield
    finally:
        stop.set()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


# --- the run --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="each measurement")
    parser.add_argument("--only", action="append", choices=[a.name for a in ATTACKS])
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument(
        "--same-priority",
        action="store_true",
        help="run the attackers at normal priority (they then also compete for the CPU)",
    )
    args = parser.parse_args()
    attacks = [a for a in ATTACKS if not args.only or a.name in args.only]

    work = Path(tempfile.mkdtemp(prefix="labs-attacks-"))
    rows: list[tuple[str, float, float, int]] = []
    try:
        with stack(work) as (base_url, env):
            quiet_key = create_key(env, "quiet")
            attacker_key = create_key(env, "attacker")
            time.sleep(0.5)
            quiet_p50(base_url, quiet_key, 2)  # warm up
            for attack in attacks:
                alone, _ = quiet_p50(base_url, quiet_key, args.seconds)
                niceness = 0 if args.same_priority else 19
                with attacking(attack, base_url, attacker_key, niceness):
                    attacked, failures = quiet_p50(base_url, quiet_key, args.seconds)
                rows.append((attack.name, alone, attacked, failures))
                print(
                    f"{attack.name:<15} quiet p50 alone {alone:6.2f} ms, attacked {attacked:6.2f} "
                    f"ms, ratio {attacked / alone:4.2f}, quiet failures {failures}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_report(args.output, rows, args.seconds, niced=not args.same_priority)
    if any(attacked > TARGET_RATIO * alone or failures for _, alone, attacked, failures in rows):
        sys.exit(1)


def write_report(
    path: Path, rows: list[tuple[str, float, float, int]], seconds: float, *, niced: bool
) -> None:
    import platform

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Under attack",
        "",
        f"Written by `make attacks` (stress/attacks.py). {when}, commit `{git_commit()}`, "
        f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python "
        f"{platform.python_version()}; one `serve` worker held to {DESCRIPTOR_LIMIT} "
        f"descriptors; a quiet client sends one event every {QUIET_INTERVAL * 1000:.0f} ms on "
        f"one keep-alive connection for {seconds:g} s alone, then {seconds:g} s under attack; "
        + (
            "the attackers run at `nice 19` on the same cores (their CPU would be their own on "
            "the internet; `--same-priority` measures without that)."
            if niced
            else "the attackers run at normal priority on the same cores (`--same-priority`)."
        ),
        "",
        "| attack | quiet p50 alone | quiet p50 attacked | ratio (target ≤ 2) | quiet failures |",
        "|---|---|---|---|---|",
    ]
    for name, alone, attacked, failures in rows:
        lines.append(
            f"| {name} | {alone:.2f} ms | {attacked:.2f} ms | {attacked / alone:.2f} | {failures} |"
        )
    section = "\n".join(lines) + "\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if "## Under attack" in text:
        before, rest = text.split("## Under attack", 1)
        after = rest.split("\n## ", 1)
        text = before + section + (("\n## " + after[1]) if len(after) > 1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    main()
