"""What the app's lifespan builds and every request reads."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from labs_analytics.auth.cache import KeyCache
from labs_analytics.auth.platform import PlatformVerifier
from labs_analytics.dashboard.sessions import DashboardSessions
from labs_analytics.flusher import Flusher
from labs_analytics.ingest.service import IngestService
from labs_analytics.queue.service import EventQueue
from labs_analytics.read.service import ReadService
from labs_analytics.settings import Settings


@dataclass(frozen=True, slots=True)
class AppState:
    settings: Settings
    redis: Redis
    engine: AsyncEngine
    key_cache: KeyCache
    queue: EventQueue
    ingest: IngestService
    flusher: Flusher | None
    reads: ReadService
    platform: PlatformVerifier
    dashboard: DashboardSessions
