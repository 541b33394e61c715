"""The dashboard in a real browser: Debian's Chromium, driven by Playwright.

One real `labs-analytics serve` for the module, a seeded dataset sent through
its own API, and keys of every kind. Without a browser (or Playwright) the
tests are skipped with the reason in the summary, unless ``REQUIRE_BROWSER=1``
(CI sets it), which turns the skip into a failure.

Screenshots go to ``test-artifacts/dashboard/``; with
``UPDATE_README_SCREENSHOTS=1`` (``make screenshots``) the overview and the
pipeline panel are also written to ``docs/screenshots/`` for the README.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import os
import random
import shutil
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from tests.helpers import (
    BROWSER_SKIPPED,
    REPO,
    ServeProcess,
    Servers,
    count_events,
    create_key,
    fast_settings,
    serve_process,
)

from labs_analytics.auth.keys import Scope
from labs_analytics.settings import Settings

T = TypeVar("T")
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
README_SCREENSHOTS = REPO / "docs" / "screenshots"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    named = os.environ.get("CHROMIUM_PATH")
    if named:
        return named if Path(named).exists() else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (make install adds it)"
    if find_chromium() is None:
        return (
            "no Chromium found (CHROMIUM_PATH, or chromium on PATH): "
            "`make browser` installs Debian's package as root"
        )
    return None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    reason = _missing_browser()
    if reason is not None:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but the browser tests cannot run: {reason}")
        pytest.skip(f"{BROWSER_SKIPPED}{reason}")
    path = find_chromium()
    assert path is not None
    return path


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    # Per module, never per session: Playwright's sync API keeps an event loop
    # running in this thread while it is open, and async tests after this
    # module could not start theirs.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path)
        try:
            yield launched
        finally:
            launched.close()


def screenshot(page: Any, name: str, *, readme: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if readme and os.environ.get("UPDATE_README_SCREENSHOTS") == "1":
        README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_SCREENSHOTS / f"dashboard-{name}.png")
    return path


@dataclass
class Site:
    """The served dashboard, its keys, and the products of the seeded data."""

    server: ServeProcess
    settings: Settings
    product: str
    other_product: str
    read_key: str
    admin_key: str
    ingest_key: str
    other_read_key: str
    empty_read_key: str
    users: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def api(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> Any:
        response = httpx.request(
            method,
            f"{self.base_url}{path}",
            headers={"Authorization": f"Bearer {key or self.read_key}"},
            timeout=30,
            **kwargs,
        )
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def query(self, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = self.api("POST", "/v1/query", key, json=body)
        return answer

    def expect_console_error(self, console: Console, status: int) -> None:
        """A page answered ``status`` on purpose: Chromium logs that as an error."""
        console.allowed.append(f"status of {status}")


ROUTES = ("/clubs", "/clubs/{club_id}", "/search", "/login")
CLUBS = ("pennlabs", "dance", "chess", "a-cappella")


def seeded_events(now: dt.datetime) -> list[dict[str, Any]]:
    """Two weeks of clicks, views and API calls, the same every run (times relative to now):
    the 7-day views have a previous period to compare with."""
    rng = random.Random(13)
    events: list[dict[str, Any]] = []
    for i in range(600):
        at = now - dt.timedelta(minutes=rng.randint(5, 13 * 24 * 60))
        user = f"student-{rng.randint(1, 30)}"
        if i % 2:
            status = 500 if rng.random() < 0.1 else 200
            events.append(
                {
                    "name": "http.request",
                    "user": user,
                    "timestamp": at.isoformat(),
                    "properties": {
                        "route": rng.choice(ROUTES),
                        "status_code": status,
                        "duration_ms": round(rng.uniform(3, 400), 1),
                    },
                }
            )
        else:
            name = rng.choice(("club.view", "club.view", "club.apply", "search"))
            events.append(
                {
                    "name": name,
                    "user": user,
                    "timestamp": at.isoformat(),
                    "properties": {"club": rng.choice(CLUBS)},
                }
            )
    return events


@pytest.fixture(scope="module")
def site(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory, chromium_path: str
) -> Iterator[Site]:
    del chromium_path  # no browser: no server either
    # Tests open pages far faster than people do: a higher per-key query rate
    # than the default (10 a second) keeps them clear of 429s.
    settings = fast_settings(
        servers,
        prefix="dash",
        spool_dir=tmp_path_factory.mktemp("dash-spool"),
        read_rate_limit_per_second=100,
    )
    product = f"clubs-{uuid.uuid4().hex[:6]}"
    other = f"mobile-{uuid.uuid4().hex[:6]}"
    empty = f"empty-{uuid.uuid4().hex[:6]}"

    async def keys() -> dict[str, str]:
        return {
            "read": await create_key(settings, product, (Scope.READ,)),
            "admin": await create_key(settings, product, (Scope.ADMIN,)),
            "ingest": await create_key(settings, product, (Scope.INGEST,)),
            "other_read": await create_key(settings, other, (Scope.READ, Scope.INGEST)),
            "empty_read": await create_key(settings, empty, (Scope.READ,)),
        }

    made = run_async(keys())
    with serve_process(
        settings,
        tmp_path_factory.mktemp("dash-serve"),
        READ_RATE_LIMIT_PER_SECOND=str(settings.read_rate_limit_per_second),
    ) as server:
        events = seeded_events(dt.datetime.now(dt.UTC))
        for start in range(0, len(events), 100):
            response = httpx.post(
                f"{server.base_url}/v1/events",
                json={"events": events[start : start + 100]},
                headers={"Authorization": f"Bearer {made['ingest']}"},
            )
            assert response.status_code == 202, response.text
        secret = [{"name": "other.secret", "user": "other-user", "properties": {"club": "hidden"}}]
        response = httpx.post(
            f"{server.base_url}/v1/events",
            json={"events": secret * 5},
            headers={"Authorization": f"Bearer {made['other_read']}"},
        )
        assert response.status_code == 202, response.text
        run_async(_wait_for_rows(settings, {product: len(events), other: 5}))
        yield Site(
            server=server,
            settings=settings,
            product=product,
            other_product=other,
            read_key=made["read"],
            admin_key=made["admin"],
            ingest_key=made["ingest"],
            other_read_key=made["other_read"],
            empty_read_key=made["empty_read"],
            users=sorted({str(e["user"]) for e in events}),
        )


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from sync code, whatever loop this thread may be in."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _wait_for_rows(settings: Settings, expected: dict[str, int]) -> None:
    import asyncpg

    from labs_analytics.settings import to_asyncpg_dsn

    connection = await asyncpg.connect(to_asyncpg_dsn(settings.database_url))
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            counts = {p: await count_events(connection, p) for p in expected}
            if counts == expected:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"seeded rows never landed: {counts} != {expected}")
            await asyncio.sleep(0.1)
    finally:
        await connection.close()


class Console:
    """Everything a page logged as an error or warning, and any uncaught exception."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.allowed: list[str] = []  # "Failed to load resource" lines a test expects

    def watch(self, page: Any) -> Any:
        page.on(
            "console",
            lambda m: (
                self.problems.append(f"{m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))
        return page


@pytest.fixture
def console() -> Iterator[Console]:
    watched = Console()
    yield watched
    unexpected = [
        line
        for line in watched.problems
        if not ("Failed to load resource" in line and any(a in line for a in watched.allowed))
    ]
    assert unexpected == [], "the page logged problems"


@pytest.fixture
def new_page(browser: Any, console: Console) -> Iterator[Any]:
    """``new_page(width=…)``: a page in a fresh context (no cookies), its console watched."""
    contexts: list[Any] = []

    def make(*, width: int = 1280, height: int = 900) -> Any:
        context = browser.new_context(
            viewport={"width": width, "height": height}, accept_downloads=True
        )
        contexts.append(context)
        return console.watch(context.new_page())

    yield make
    for context in contexts:
        context.close()


def sign_in(page: Any, site: Site, key: str, *, query: str = "") -> None:
    page.goto(f"{site.base_url}/dashboard")
    page.fill("#key", key)
    page.click("form[action='/dashboard/sign-in'] button[type=submit]")
    page.wait_for_selector("main#view")  # the app's page, not the sign-in form
    if query:
        open_view(page, site, query)


def open_view(page: Any, site: Site, query: str) -> None:
    page.goto(f"{site.base_url}/dashboard?{query}")
    page.wait_for_selector("main#view[data-ready=true]", timeout=15_000)
