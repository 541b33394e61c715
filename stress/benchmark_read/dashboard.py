"""The dashboard's overview over the benchmark's data, loaded in Chromium.

A load is timed in the page itself: from the navigation's start (the
page's clock counts from it) to the ``dashboard:ready`` performance mark,
which the page sets once every panel has its answer and the frame showing
them is painted. So it holds the HTML, the script and all of the overview's
/v1/query calls. Not the moment Playwright notices: its wait for a selector
polls at growing intervals (up to 500 ms), and reading ``performance.now()``
then added that delay to every load (up to ~500 ms on the 10-million-event
run). Skipped, with the reason, when there is no browser (see
tests/browser/conftest.py for where one is looked for).
"""

from __future__ import annotations

import shutil
from typing import Any

from .results import DashboardResult, Timing

WARM_UPS = 2
VIEW = "view=overview&range=30d&tz=UTC&prop=club_id"


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def measure_overview(base_url: str, key: str, runs: int) -> DashboardResult:
    chromium = find_browser()
    if chromium is None:
        return DashboardResult(loads=None, view=VIEW, skipped="no Chromium on PATH")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return DashboardResult(loads=None, view=VIEW, skipped="Playwright is not installed")
    samples: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base_url}/dashboard")
            page.fill("#key", key)
            page.click("button[type=submit]")
            page.wait_for_selector("main#view")
            for run in range(WARM_UPS + runs):
                elapsed = _load(page, f"{base_url}/dashboard?{VIEW}")
                if run >= WARM_UPS:
                    samples.append(elapsed)
        finally:
            browser.close()
    return DashboardResult(loads=Timing(tuple(samples)), view=VIEW, skipped=None)


def _load(page: Any, url: str) -> float:
    page.goto(url)
    page.wait_for_selector("main#view[data-ready=true]", timeout=60_000)
    states = page.eval_on_selector_all("section.panel", "s => s.map(p => p.dataset.state)")
    if any(state not in ("ready", "empty") for state in states):
        raise RuntimeError(f"a panel did not render: {states}")
    marks = 'performance.getEntriesByName("dashboard:ready")'
    page.wait_for_function(f"{marks}.length > 0", timeout=10_000)
    elapsed: float = page.evaluate(f"{marks}[0].startTime")
    return elapsed
