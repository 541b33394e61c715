"""The SDK on its own: installed by pip into a bare venv, and proxies from the environment."""

from __future__ import annotations

import asyncio
import re
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

from labs_analytics.settings import Settings
from labs_analytics_client import AnalyticsClient
from tests.helpers import SDK, ServeProcess, create_key, event_rows, new_product, wait_for_events


@pytest.fixture(scope="session")
def sdk_only_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv into which ``pip install ./clients/python`` went, and nothing else."""
    venv = tmp_path_factory.mktemp("sdk-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The README's command, with the venv's own pip: no --no-deps, no extra names.
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", str(SDK)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "ERROR" not in installed.stderr, installed.stderr  # no resolver complaints
    return python


def _distributions(python: Path) -> set[str]:
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {line.split("==")[0].lower().replace("_", "-") for line in listed.stdout.split()}


def test_the_sdk_installs_with_httpx_as_its_only_dependency(sdk_only_python: Path) -> None:
    installed = _distributions(sdk_only_python) - {"pip", "setuptools", "wheel"}
    # httpx and what httpx itself needs; nothing of the server.
    assert "labs-analytics-client" in installed
    assert "httpx" in installed
    assert not installed & {"labs-analytics", "fastapi", "pydantic", "redis", "sqlalchemy"}
    assert installed <= {
        "labs-analytics-client",
        "httpx",
        "httpcore",
        "h11",
        "anyio",
        "sniffio",
        "idna",
        "certifi",
        "typing-extensions",
        "exceptiongroup",
    }, installed
    check = subprocess.run(
        [str(sdk_only_python), "-m", "pip", "check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout


def _readme_quick_start() -> str:
    """The first Python block of the SDK's README: what a newcomer copies."""
    readme = (SDK / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert blocks, "the SDK README has no Python example"
    return str(blocks[0])


async def test_the_readme_quick_start_delivers_from_the_installed_sdk(
    sdk_only_python: Path,
    shared_server: ServeProcess,
    sdk_settings: Settings,
    db: asyncpg.Connection,
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    done = await asyncio.to_thread(
        subprocess.run,
        [str(sdk_only_python), "-c", _readme_quick_start()],
        env={
            "PATH": "/usr/bin:/bin",
            "LABS_ANALYTICS_API_KEY": key,
            "LABS_ANALYTICS_URL": shared_server.base_url,
        },
        cwd=sdk_only_python.parent,  # not the checkout: only the installed package is found
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # no warning either
    await wait_for_events(db, 1, product=product)  # delivered by the exit hook
    (row,) = await event_rows(db, product)
    assert row["name"] == "signup.completed"
    assert row["user_id"] == "u_123"
    assert row["properties"] == {"plan": "pro"}


async def test_the_installed_sdk_loads_nothing_of_the_server(
    sdk_only_python: Path,
    shared_server: ServeProcess,
    sdk_settings: Settings,
    db: asyncpg.Connection,
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    code = textwrap.dedent(
        f"""
        import sys
        from labs_analytics_client import AnalyticsClient, AsyncAnalyticsClient
        from labs_analytics_client import AnalyticsMiddleware  # plain ASGI, loaded lazily

        loaded = sorted(m for m in sys.modules if m.startswith("labs_analytics"))
        assert all(m.startswith("labs_analytics_client") for m in loaded), loaded
        for framework in ("django", "flask", "celery", "starlette"):
            assert framework not in sys.modules, framework

        client = AnalyticsClient({key!r}, base_url={shared_server.base_url!r})
        for i in range(3):
            client.track("standalone.event", properties={{"i": i}})
        print("ok")
        """
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [str(sdk_only_python), "-c", code],
        env={"PATH": "/usr/bin:/bin"},
        cwd=sdk_only_python.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    await wait_for_events(db, 3, product=product)  # delivered by the exit hook
    assert sorted(row["properties"]["i"] for row in await event_rows(db, product)) == [0, 1, 2]


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
    assert len(await event_rows(db, product)) == 5
