"""Scopes, super_properties, before_send, send=False and the module-level default client.

Pure logic: every client here has ``send=False`` (or an unreachable URL and
nothing queued), so no request is made; what the real service stores is
checked in tests/sdk/test_additions.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

import labs_analytics_client as analytics
from labs_analytics_client import (
    AnalyticsClient,
    AsyncAnalyticsClient,
    DroppedEvent,
    InvalidEvent,
    _default,
)

UNREACHABLE = "http://127.0.0.1:9"


class Recorder:
    """A before_send that keeps what it is given and lets it through."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        self.events.append(dict(event))
        return event


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(recorder: Recorder) -> Iterator[AnalyticsClient]:
    client = AnalyticsClient(
        send=False, super_properties={"app": "web", "tier": "low"}, before_send=recorder
    )
    yield client
    client.close(timeout=0)


# --- scope and super_properties


def test_explicit_arguments_win_over_the_scope_which_wins_over_super_properties(
    client: AnalyticsClient, recorder: Recorder
) -> None:
    with analytics.scope(user="u1", properties={"tier": "mid", "route": "/a"}):
        client.track("page.view")
        client.track("page.view", user="u2", properties={"route": "/b"})
    client.track("page.view")
    first, second, outside = recorder.events
    assert (first["user"], first["properties"]) == (
        "u1",
        {"app": "web", "tier": "mid", "route": "/a"},
    )
    assert (second["user"], second["properties"]) == (
        "u2",
        {"app": "web", "tier": "mid", "route": "/b"},
    )
    assert (outside["user"], outside["properties"]) == (None, {"app": "web", "tier": "low"})


def test_nested_scopes_merge_and_the_inner_user_wins(
    client: AnalyticsClient, recorder: Recorder
) -> None:
    with client.scope(user="outer", properties={"a": 1, "b": 1}):
        with client.scope(properties={"b": 2}):
            client.track("x")
            with analytics.scope(user="inner"):
                client.track("x")
        client.track("x")
    assert [(e["user"], e["properties"]) for e in recorder.events] == [
        ("outer", {"app": "web", "tier": "low", "a": 1, "b": 2}),
        ("inner", {"app": "web", "tier": "low", "a": 1, "b": 2}),
        ("outer", {"app": "web", "tier": "low", "a": 1, "b": 1}),
    ]


def test_the_scope_is_left_even_when_the_block_raises(
    client: AnalyticsClient, recorder: Recorder
) -> None:
    with pytest.raises(RuntimeError), analytics.scope(user="u1"):
        raise RuntimeError
    client.track("x")
    assert recorder.events[0]["user"] is None


async def test_asyncio_tasks_inherit_the_scope_and_keep_their_own(
    client: AnalyticsClient, recorder: Recorder
) -> None:
    async def handler(user: str) -> None:
        async with client.scope(user=user, properties={"handler": user}):
            await asyncio.sleep(0)
            client.track("request")

    async with analytics.scope(properties={"outer": True}):
        await asyncio.gather(*(asyncio.create_task(handler(f"u{i}")) for i in range(5)))
        client.track("after")
    seen = sorted(
        (e["name"], str(e["user"]), e["properties"].get("handler", "")) for e in recorder.events
    )
    assert seen == [("after", "None", "")] + [("request", f"u{i}", f"u{i}") for i in range(5)]
    assert all(e["properties"]["outer"] is True for e in recorder.events)


def test_a_thread_starts_without_the_scope_unless_given_the_context(
    client: AnalyticsClient, recorder: Recorder
) -> None:
    with analytics.scope(user="u1"), ThreadPoolExecutor(1) as pool:
        pool.submit(client.track, "plain").result()
        pool.submit(contextvars.copy_context().run, client.track, "copied").result()
    assert {e["name"]: e["user"] for e in recorder.events} == {"plain": None, "copied": "u1"}


def test_properties_that_are_not_a_mapping_are_still_refused() -> None:
    drops: list[DroppedEvent] = []
    client = AnalyticsClient(send=False, super_properties={"app": "web"}, on_drop=drops.append)
    with analytics.scope(properties={"a": 1}):
        assert client.track("x", properties=["not", "a", "mapping"]) is None  # type: ignore[arg-type]
    assert [drop.reason for drop in drops] == ["invalid_properties"]


# --- before_send


def test_before_send_sees_the_whole_event_and_its_changes_are_sent() -> None:
    seen: list[dict[str, Any]] = []

    def scrub(event: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(event))
        event["properties"].pop("email")
        event["user"] = "anonymous"
        return event

    client = AnalyticsClient(send=False, before_send=scrub, context={"host": "h1"}, strict=True)
    event_id = client.track("signup", user="u1", properties={"email": "a@b.c", "plan": "pro"})
    (event,) = seen
    assert set(event) == {"name", "user", "timestamp", "properties", "context", "event_id"}
    assert event["event_id"] == event_id
    assert event["context"] == {"host": "h1"}
    assert event["timestamp"].tzinfo is not None
    assert client.stats().discarded == 1


def test_an_event_before_send_drops_is_counted_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    drops: list[DroppedEvent] = []
    client = AnalyticsClient(
        send=False,
        before_send=lambda event: None if event["name"] == "noise" else event,
        on_drop=drops.append,
        strict=True,  # dropping on purpose is not an invalid event
    )
    with caplog.at_level(logging.WARNING, logger="labs_analytics_client"):
        assert client.track("noise") is None
        assert client.track("signal") is not None
    assert client.stats().dropped_by_reason == {"before_send": 1}
    assert [(d.reason, d.name) for d in drops] == [("before_send", "noise")]
    assert caplog.records == []


def test_a_before_send_that_raises_drops_the_event_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("oops")

    client = AnalyticsClient(send=False, before_send=broken)
    with caplog.at_level(logging.WARNING, logger="labs_analytics_client"):
        assert client.track("a") is None
        assert client.track("b") is None
    assert client.stats().dropped_by_reason == {"before_send_error": 2}
    assert len(caplog.records) == 1
    assert "before_send" in caplog.records[0].getMessage()


def test_a_before_send_that_raises_raises_invalid_event_when_strict() -> None:
    client = AnalyticsClient(send=False, before_send=lambda event: 1 / 0, strict=True)  # type: ignore[arg-type,return-value]
    with pytest.raises(InvalidEvent):
        client.track("a")


def test_what_before_send_returns_is_checked_like_any_event() -> None:
    drops: list[DroppedEvent] = []
    client = AnalyticsClient(
        send=False,
        before_send=lambda event: {**event, "name": "bad name!"},
        on_drop=drops.append,
    )
    assert client.track("good") is None
    assert [d.reason for d in drops] == ["invalid_name"]
    not_a_dict = AnalyticsClient(send=False, before_send=lambda event: "nope")  # type: ignore[arg-type,return-value]
    assert not_a_dict.track("good") is None
    assert not_a_dict.stats().dropped_by_reason == {"before_send_error": 1}


# --- send=False


class NoNetwork(httpx.BaseTransport):
    def __init__(self) -> None:
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        raise AssertionError("send=False must not make a request")


def test_send_false_checks_and_counts_but_never_sends() -> None:
    transport = NoNetwork()
    client = AnalyticsClient(send=False, transport=transport, base_url=UNREACHABLE)  # no key
    ids = [client.track("ok", properties={"i": i}) for i in range(3)]
    assert all(ids)
    assert client.track("bad name!") is None
    assert client.flush() == 0
    stats = client.stats()
    assert (stats.discarded, stats.sent, stats.queued, stats.dropped) == (3, 0, 0, 1)
    assert client.close() == 0
    assert client.track("late") is None  # closed, as any client
    assert transport.requests == 0


async def test_send_false_on_the_async_client() -> None:
    async with AsyncAnalyticsClient(send=False) as client:
        assert client.track("ok") is not None
        assert await client.flush() == 0
        assert client.stats().discarded == 1


def test_a_key_is_still_required_when_sending() -> None:
    with pytest.raises(ValueError, match="API key"):
        AnalyticsClient("", base_url=UNREACHABLE)


# --- the module-level default client


@pytest.fixture
def no_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for variable in (
        "LABS_ANALYTICS_API_KEY",
        "LABS_ANALYTICS_URL",
        "LABS_ANALYTICS_SEND",
        "LABS_ANALYTICS_DEBUG",
        "LABS_ANALYTICS_ENABLED",
    ):
        monkeypatch.delenv(variable, raising=False)
    analytics.close(timeout=0)
    yield
    analytics.close(timeout=0)


@pytest.mark.usefixtures("no_default")
def test_without_a_key_the_default_client_warns_once_and_does_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="labs_analytics_client"):
        assert analytics.track("job.done") is None
        assert analytics.track("job.done") is None
    assert not analytics.default_client().enabled
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["analytics.no_api_key"]
    assert analytics.flush() == 0


@pytest.mark.usefixtures("no_default")
def test_the_default_client_is_made_once_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LABS_ANALYTICS_API_KEY", "lak_0_x")
    monkeypatch.setenv("LABS_ANALYTICS_URL", UNREACHABLE + "/")
    monkeypatch.setenv("LABS_ANALYTICS_SEND", "0")
    barrier = threading.Barrier(8)

    def make() -> AnalyticsClient:
        barrier.wait()
        return analytics.default_client()

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: make(), range(8)))
    assert all(client is made[0] for client in made)
    assert made[0].base_url == UNREACHABLE
    assert analytics.track("job.done", user="u1") is not None
    assert made[0].stats().discarded == 1


@pytest.mark.usefixtures("no_default")
def test_configure_replaces_the_default_client_and_close_forgets_it() -> None:
    first = analytics.configure(send=False)
    analytics.track("one")
    second = analytics.configure(send=False, super_properties={"job": "nightly"})
    assert second is analytics.default_client() is not first
    assert first.track("late") is None  # closed by configure
    analytics.track("two")
    assert (first.stats().discarded, second.stats().discarded) == (1, 1)
    assert analytics.close() == 0
    assert _default._client is None
    assert analytics.flush() == 0  # nothing to flush, nothing made
    assert _default._client is None
