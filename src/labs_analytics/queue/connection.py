"""Building Redis clients. Nothing connects until the first command."""

from __future__ import annotations

from redis.asyncio import Redis


def create_redis(url: str, *, timeout_seconds: float) -> Redis:
    """A client whose every command gives up after ``timeout_seconds``, so a hung
    Redis turns into a prompt 503 instead of a hung request."""
    if not url:
        raise ValueError("REDIS_URL is not set")
    return Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
        retry_on_timeout=False,
    )
