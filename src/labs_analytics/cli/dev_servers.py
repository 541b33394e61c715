"""What `labs-analytics dev` (`make run`) serves on: embedded PostgreSQL and Redis, migrated, a key.

The embedded servers keep their data under DATA_DIR and listen on the same
ports at every start: `dev` writes their URLs to DATA_DIR/dev.env, reads the
ports back next time, and every other command run from the same folder reads
the URLs from `.data/dev.env` (after the environment and `.env`), so
`labs-analytics keys list` just works beside `make run`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import typer
from dotenv import dotenv_values

from labs_analytics.auth.keys import Scope
from labs_analytics.auth.repository import KeyRepository
from labs_analytics.cli.common import load_settings, with_engine
from labs_analytics.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, port_is_free
from labs_analytics.settings import DEV_ENV_FILE
from labs_analytics.storage import migrations

DEV_ENV_NAME = Path(DEV_ENV_FILE).name
LISTEN_TIMEOUT_SECONDS = 120.0
_DEV_ENV_HEADER = """\
# Written by `labs-analytics dev` (make run): the URLs of the embedded servers it
# started. Every `labs-analytics` command run from this folder reads them (the
# environment and .env win), and `dev` listens on the same ports next time.
"""


@contextmanager
def dev_servers(*, host: str, port: int) -> Iterator[None]:
    """For `dev`, around serving the API on ``host:port``: the servers started,
    migrated, a key made, their URLs in the environment and in DATA_DIR/dev.env,
    the banner printed once the API listens; on exit, stopped.

    A busy ``port`` is refused (exit 1) before anything starts.
    """
    # Its own earlier URLs (.data/dev.env) are not servers to use: they are
    # the ones it is about to start.
    settings = load_settings(dev_servers=False)
    if not port_is_free(port, host):
        _fail(
            f"port {port} is in use on {host}: stop what uses it, or run "
            f"`make run PORT={_next_free_port(port, host)}` (or `labs-analytics dev --port …`)"
        )
    dev_env = Path(settings.data_dir) / DEV_ENV_NAME
    with _only_dev_in(dev_env.parent):
        started: list[EmbeddedPostgres | EmbeddedRedis] = []
        try:
            database_url, redis_url = _start_servers(
                database_url=settings.database_url,
                redis_url=settings.redis_url,
                dev_env=dev_env,
                api_port=port,
                started=started,
            )
            # Handed to uvicorn's app factory, which reads Settings from the environment.
            os.environ["DATABASE_URL"] = database_url
            os.environ["REDIS_URL"] = redis_url

            migrations.upgrade(database_url)
            new_key = with_engine(
                database_url,
                lambda engine: KeyRepository(engine).create(
                    product="dev", scopes=[Scope.INGEST, Scope.READ], label="labs-analytics dev"
                ),
            )
            banner = _banner(
                host=host,
                port=port,
                key=new_key.plaintext,
                database_url=database_url,
                redis_url=redis_url,
                dev_env=dev_env,
            )
            _when_listening(host, port, lambda: _print(banner))
            yield
        finally:
            for server in reversed(started):
                server.stop()


def _start_servers(
    *,
    database_url: str,
    redis_url: str,
    dev_env: Path,
    api_port: int,
    started: list[EmbeddedPostgres | EmbeddedRedis],
) -> tuple[str, str]:
    """The configured servers, else embedded ones (appended to ``started``) on
    the ports of the last start; the embedded ones' URLs go to ``dev_env``."""
    data_dir = dev_env.parent
    remembered = _remembered_ports(dev_env)
    taken = {api_port}
    urls: dict[str, str] = {}
    if not database_url:
        postgres = EmbeddedPostgres(data_dir / "postgres")
        _stop_leftover("PostgreSQL", postgres.stop_leftover())
        postgres.port = _pick_port("PostgreSQL", remembered.get("DATABASE_URL"), dev_env, taken)
        taken.add(postgres.port)
        postgres.start()
        started.append(postgres)
        database_url = urls["DATABASE_URL"] = postgres.url
    if not redis_url:
        redis = EmbeddedRedis(data_dir / "redis")
        _stop_leftover("Redis", redis.stop_leftover())
        redis.port = _pick_port("Redis", remembered.get("REDIS_URL"), dev_env, taken)
        redis.start()
        started.append(redis)
        redis_url = urls["REDIS_URL"] = redis.url
    _write_dev_env(dev_env, urls)
    return database_url, redis_url


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _note(message: str) -> None:
    typer.echo(f"dev: {message}", err=True)


def _next_free_port(port: int, host: str) -> int:
    for candidate in range(port + 1, min(port + 200, 65536)):
        if port_is_free(candidate, host):
            return candidate
    return port + 10


@contextmanager
def _only_dev_in(data_dir: Path) -> Iterator[None]:
    """Hold DATA_DIR for this `dev`: a second one in the same folder would start
    a second PostgreSQL on the same data directory (or stop the first's)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "dev.lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            _fail(
                f"another `labs-analytics dev` (pid {holder}) is using {data_dir}: "
                "stop it first, or use it (the other commands find its servers)"
            )
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def _remembered_ports(dev_env: Path) -> dict[str, int]:
    """The ports of the servers the last `dev` started, by the URL's name."""
    ports: dict[str, int] = {}
    if not dev_env.is_file():
        return ports
    for name, url in dotenv_values(dev_env).items():
        try:
            parts = urlsplit(url or "")
            port = parts.port
        except ValueError:
            continue
        if parts.hostname == "127.0.0.1" and port:
            ports[name] = port
    return ports


def _stop_leftover(server: str, pid: int | None) -> None:
    if pid is not None:
        _note(f"stopped the {server} (pid {pid}) an earlier `dev` left running")


def _pick_port(server: str, remembered: int | None, dev_env: Path, taken: set[int]) -> int:
    """The port of the last start if it is still free, else a new one (said)."""
    if remembered is not None and remembered not in taken and port_is_free(remembered):
        return remembered
    port = free_port()
    while port in taken:
        port = free_port()
    if remembered is not None:
        _note(
            f"{server}'s port {remembered} (from {dev_env}) is taken by another program; "
            f"using {port} from now on"
        )
    return port


def _write_dev_env(dev_env: Path, urls: dict[str, str]) -> None:
    lines = [f"{name}={url}" for name, url in urls.items()]
    partial = dev_env.with_suffix(".tmp")
    partial.write_text(_DEV_ENV_HEADER + "\n".join(lines) + "\n")
    partial.replace(dev_env)  # a reader sees the old file or the new one, never half


def _when_listening(host: str, port: int, announce: Callable[[], None]) -> None:
    """Call ``announce`` once the server accepts connections (uvicorn listens
    only after the app's start-up), from a thread: serving blocks this one."""
    probe_host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)

    def wait() -> None:
        deadline = time.monotonic() + LISTEN_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((probe_host, port), timeout=1):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            announce()
            return

    threading.Thread(target=wait, name="dev-banner", daemon=True).start()


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _command_name() -> str:
    """How to run `labs-analytics` from here, as this process was run:
    `.venv/bin/labs-analytics` under `make run`, `labs-analytics` once on PATH."""
    program = Path(sys.argv[0]).resolve()
    on_path = shutil.which("labs-analytics")
    if on_path and Path(on_path).resolve() == program:
        return "labs-analytics"
    try:
        return str(program.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(program)


def _banner(
    *, host: str, port: int, key: str, database_url: str, redis_url: str, dev_env: Path
) -> str:
    base = f"http://{host}:{port}"
    body = '{"name": "hello.world", "user": "me", "properties": {"source": "curl"}}'
    cli = _command_name()
    lines = [
        "",
        "Labs Analytics dev server",
        f"  API        {base}   (docs: {base}/docs)",
        f"  Dashboard  {base}/dashboard   (sign in with the API key below)",
        f"  PostgreSQL {database_url}",
        f"  Redis      {redis_url}",
        "  API key    (product 'dev', scopes ingest+read; shown once)",
        f"             {key}",
        "",
        "Send an event:",
        f"  curl -sS -X POST {base}/v1/events -H 'Authorization: Bearer {key}' "
        f"-H 'Content-Type: application/json' -d '{body}'",
        "See it in PostgreSQL (after ~0.5 s), from another terminal in this folder:",
        f"  {cli} psql -c 'SELECT name, user_id, stored_at FROM events "
        "ORDER BY stored_at DESC LIMIT 5'",
        f"  {cli} txlog",
    ]
    if dev_env.resolve() != Path(DEV_ENV_FILE).resolve():
        lines.append(
            f"  (DATA_DIR is not .data: load the URLs first with `set -a; . {dev_env}; set +a`)"
        )
    return "\n".join([*lines, ""]) + "\n"
