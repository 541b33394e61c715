"""The pieces of the bounded HTTP protocol that need no socket."""

from __future__ import annotations

import resource

import pytest

from labs_analytics.api.protocol import (
    RESERVED_DESCRIPTORS,
    _head_without_upgrade,
    connection_cap,
    raise_descriptor_limit,
)


def test_an_h2c_head_is_rebuilt_without_its_upgrade() -> None:
    head = _head_without_upgrade(
        b"POST",
        b"/v1/events?x=1",
        "1.1",
        [
            (b"host", b"localhost"),
            (b"connection", b"Upgrade, HTTP2-Settings, keep-alive"),
            (b"upgrade", b"h2c"),
            (b"http2-settings", b"AAMAAABkAAQ"),
            (b"content-length", b"2"),
        ],
    )
    assert head == (
        b"POST /v1/events?x=1 HTTP/1.1\r\nhost: localhost\r\nconnection: keep-alive\r\n"
        b"content-length: 2\r\n\r\n"
    )


def test_a_connection_header_naming_only_the_upgrade_is_dropped() -> None:
    head = _head_without_upgrade(
        b"GET", b"/", "1.1", [(b"connection", b"upgrade"), (b"upgrade", b"h2c")]
    )
    assert head == b"GET / HTTP/1.1\r\n\r\n"


def test_the_connection_cap_stays_below_the_descriptor_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no descriptor limit in this process")
    assert connection_cap(soft * 10) == max(16, soft - RESERVED_DESCRIPTORS)
    assert connection_cap(16) == 16


def test_the_descriptor_limit_is_raised_towards_what_connections_need() -> None:
    soft, hard = raise_descriptor_limit(64)
    assert soft >= min(64 + RESERVED_DESCRIPTORS, hard if hard != resource.RLIM_INFINITY else soft)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
