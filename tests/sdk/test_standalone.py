"""The SDK on its own: a venv with nothing but httpx, and proxies from the environment."""

from __future__ import annotations

import socket
import socketserver
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from labs_analytics.client import AnalyticsClient
from labs_analytics.settings import Settings
from tests.helpers import ServeProcess, create_key, wait_for_events
from tests.sdk.support import REPO, new_product, rows


@pytest.fixture(scope="session")
def httpx_only_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding httpx and its dependencies, nothing else (made once a session)."""
    venv = tmp_path_factory.mktemp("httpx-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # This venv's pip installs into the new one (--python): the same result as
    # the new venv's own pip, without bootstrapping one into it.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "httpx"],
        check=True,
        capture_output=True,
    )
    return python


async def test_the_sdk_works_in_a_venv_with_only_httpx(
    httpx_only_python: Path,
    shared_server: ServeProcess,
    sdk_settings: Settings,
    db: asyncpg.Connection,
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        from labs_analytics.client import AnalyticsClient, AsyncAnalyticsClient
        from labs_analytics.client import AnalyticsMiddleware  # plain ASGI, loaded lazily

        for server_side in ("pydantic", "fastapi", "starlette", "redis", "sqlalchemy"):
            assert importlib.util.find_spec(server_side) is None, server_side
        loaded = sorted(m for m in sys.modules if m.startswith("labs_analytics"))
        assert "labs_analytics.events" not in loaded and "labs_analytics.settings" not in loaded
        assert all(m == "labs_analytics" or m.startswith("labs_analytics.client") for m in loaded)

        client = AnalyticsClient({key!r}, base_url={shared_server.base_url!r})
        for i in range(3):
            client.track("standalone.event", properties={{"i": i}})
        print("ok")
        """
    )
    done = subprocess.run(
        [str(httpx_only_python), "-c", code],
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    await wait_for_events(db, 3, product=product)  # delivered by the exit hook
    assert sorted(row["properties"]["i"] for row in await rows(db, product)) == [0, 1, 2]


class _ForwardProxy(socketserver.ThreadingTCPServer):
    """A minimal HTTP forward proxy: one request per connection, absolute-form targets."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.targets: list[str] = []


class _ProxyHandler(socketserver.StreamRequestHandler):
    server: _ForwardProxy

    def handle(self) -> None:
        request_line = self.rfile.readline()
        if not request_line:
            return
        method, target, _ = request_line.decode().split()
        headers: list[bytes] = []
        length = 0
        while (header := self.rfile.readline()) not in (b"\r\n", b""):
            name = header.split(b":", 1)[0].strip().lower()
            if name == b"content-length":
                length = int(header.split(b":", 1)[1])
            if name not in (b"connection", b"proxy-connection", b"keep-alive"):
                headers.append(header)
        body = self.rfile.read(length)
        self.server.targets.append(target)
        url = urlsplit(target)
        path = url.path + (f"?{url.query}" if url.query else "")
        with socket.create_connection((url.hostname, url.port or 80)) as upstream:
            upstream.sendall(
                f"{method} {path} HTTP/1.1\r\n".encode()
                + b"".join(headers)
                + b"Connection: close\r\n\r\n"
                + body
            )
            while chunk := upstream.recv(65536):
                self.wfile.write(chunk)


@pytest.fixture
def forward_proxy() -> Iterator[_ForwardProxy]:
    proxy = _ForwardProxy()
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


async def test_a_proxy_from_the_environment_is_used(
    shared_server: ServeProcess,
    sdk_settings: Settings,
    db: asyncpg.Connection,
    forward_proxy: _ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{forward_proxy.server_address[1]}")
    with AnalyticsClient(key, base_url=shared_server.base_url) as client:
        for i in range(5):
            client.track("proxied.event", properties={"i": i})
        assert client.flush(timeout=10) == 0

    assert forward_proxy.targets == [f"{shared_server.base_url}/v1/events"]
    await wait_for_events(db, 5, product=product)
    assert len(await rows(db, product)) == 5
