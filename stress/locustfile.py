"""Load test of ``POST /v1/events``: product back ends sending events and batches.

Needs an ingest key for the product the load is sent as, and a running server
(``labs-analytics dev`` prints a key; otherwise ``labs-analytics keys create``)::

    export LABS_API_KEY=<key>
    locust -f stress/locustfile.py --headless -u 20 -r 10 -t 30s --host http://127.0.0.1:8000

Each simulated user is a product back end: mostly single events, sometimes a
batch of 25 to 100 (``{"events": [...]}``), every event with its own UUIDv4
``event_id``. Any answer other than 202 (or a 202 that did not accept every
event) counts as a failure, with its status and body.

Pass or fail: the run exits 1 when any request failed, when none was made, or
when the 95th percentile response time is over ``LABS_P95_MS`` milliseconds
(default 250), so CI can gate on the exit code. Add ``--csv out/locust`` to keep
the statistics.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from locust import between, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

try:
    from locust import FastHttpUser as ClientUser
except ImportError:  # a locust without geventhttpclient
    from locust import HttpUser as ClientUser  # type: ignore[assignment]

API_KEY_ENV = "LABS_API_KEY"
P95_ENV = "LABS_P95_MS"
DEFAULT_P95_MS = 250.0
BATCH_SIZES = (25, 100)

log = logging.getLogger("labs_analytics.stress")

PATHS = ("/", "/clubs", "/clubs/chess", "/events", "/search", "/profile", "/posts/42")
QUERIES = ("chess", "a cappella", "hackathon", "robotics", "debate", "film", "climbing")
ENDPOINTS = ("/api/clubs", "/api/events", "/api/posts", "/api/users/me", "/api/search")


# --- settings from the environment ---------------------------------------------


def api_key() -> str:
    return os.environ.get(API_KEY_ENV, "").strip()


def p95_limit_ms() -> float:
    raw = os.environ.get(P95_ENV, "").strip()
    return float(raw) if raw else DEFAULT_P95_MS


@events.init.add_listener
def _check_environment(environment: Environment, **_kwargs: Any) -> None:
    # SystemExit passes through locust's event hooks: the run stops before any
    # user starts, with this message instead of a wall of 401s.
    if not api_key():
        sys.exit(
            f"error: {API_KEY_ENV} is not set. Create an ingest key "
            "(`labs-analytics keys create --product <product> --scope ingest`, or the one "
            f"`labs-analytics dev` prints) and run `export {API_KEY_ENV}=<key>`."
        )
    try:
        p95_limit_ms()
    except ValueError:
        sys.exit(f"error: {P95_ENV} must be a number of milliseconds, not {os.environ[P95_ENV]!r}")


# --- realistic events -----------------------------------------------------------


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def page_view() -> dict[str, Any]:
    return {"path": random.choice(PATHS), "referrer": "https://www.google.com/"}


def post_click() -> dict[str, Any]:
    return {"post_id": random.randint(1, 10_000), "position": random.randint(1, 20)}


def search() -> dict[str, Any]:
    return {"q": random.choice(QUERIES), "results": random.randint(0, 50)}


def api_call() -> dict[str, Any]:
    return {
        "endpoint": random.choice(ENDPOINTS),
        "method": random.choice(("GET", "GET", "GET", "POST")),
        "status": random.choice((200, 200, 200, 201, 404)),
        "latency_ms": round(random.lognormvariate(3.5, 0.6), 1),  # median ~33 ms, long tail
    }


# name → (properties, relative frequency)
EVENT_KINDS: dict[str, tuple[Callable[[], dict[str, Any]], int]] = {
    "page.view": (page_view, 50),
    "post.click": (post_click, 25),
    "search": (search, 10),
    "api.call": (api_call, 15),
}


def make_event() -> dict[str, Any]:
    name = random.choices(list(EVENT_KINDS), weights=[w for _, w in EVENT_KINDS.values()])[0]
    # Events reach a back end a little after they happen.
    happened = datetime.now(UTC) - timedelta(milliseconds=random.randint(0, 5_000))
    return {
        "event_id": str(uuid.uuid4()),
        "name": name,
        "user": f"u_{random.randint(1, 5_000)}",
        "timestamp": rfc3339(happened),
        "properties": EVENT_KINDS[name][0](),
    }


# --- the simulated product back end ------------------------------------------------


class ProductBackend(ClientUser):
    """A product's server: sends events as they happen, and batches now and then."""

    host = "http://127.0.0.1:8000"
    wait_time = between(0.05, 0.25)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {api_key()}"}

    @task(4)
    def send_one_event(self) -> None:
        self._post(make_event(), expected=1, name="/v1/events [single]")

    @task(1)
    def send_a_batch(self) -> None:
        batch = [make_event() for _ in range(random.randint(*BATCH_SIZES))]
        self._post({"events": batch}, expected=len(batch), name="/v1/events [batch]")

    def _post(self, body: dict[str, Any], *, expected: int, name: str) -> None:
        with self.client.post(
            "/v1/events", json=body, headers=self.headers, name=name, catch_response=True
        ) as response:
            if not response.status_code:  # connection refused, reset, timed out
                response.failure(f"no HTTP response: {getattr(response, 'error', None)!r}")
                return
            if response.status_code != 202:
                text = (response.text or "")[:500]
                response.failure(f"HTTP {response.status_code}: {text}")
                return
            try:
                accepted = response.json().get("accepted")
            except ValueError:
                accepted = None
            if accepted != expected:
                response.failure(f"202 accepted {accepted} of {expected} events: {response.text}")


# --- pass or fail -----------------------------------------------------------------


@events.quitting.add_listener
def _judge_run(environment: Environment, **_kwargs: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # the master holds the whole run's statistics
    total = environment.stats.total
    limit = p95_limit_ms()
    p95 = total.get_response_time_percentile(0.95) or 0.0
    problems = []
    if total.num_requests == 0:
        problems.append("no request was made")
    if total.fail_ratio > 0:
        problems.append(f"{total.num_failures} of {total.num_requests} requests failed")
    if p95 > limit:
        problems.append(f"p95 {p95:.0f} ms is over {P95_ENV}={limit:g} ms")
    if problems:
        log.error("load test failed: %s", "; ".join(problems))
        environment.process_exit_code = 1
    else:
        log.info(
            "load test passed: %d requests, 0 failures, p95 %.0f ms (limit %g ms)",
            total.num_requests,
            p95,
            limit,
        )
