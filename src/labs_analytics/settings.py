"""Every tunable of the service, read once from the environment, `.env` and `.data/dev.env`.

Nothing else in the package reads ``os.environ``: components take a ``Settings``
(or the values they need) as arguments, so tests build their own.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from labs_analytics.auth.keys import MAX_RATE_LIMIT_PER_SECOND, check_default_rate_limit
from labs_analytics.auth.platform import parse_subjects
from labs_analytics.ingest.legacy import LEGACY_PRODUCTS
from labs_analytics.read.fields import parse_field
from labs_analytics_client import contract

ENV_FILE = ".env"
# Written by `labs-analytics dev` (`make run`): the URLs of the embedded servers
# it started, so every command run from the same folder finds them. Read first,
# so `.env` and then the environment override it (in pydantic-settings, later
# env files win and the environment beats them all).
DEV_ENV_FILE = ".data/dev.env"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=(DEV_ENV_FILE, ENV_FILE), extra="ignore", frozen=True
    )

    # --- servers -------------------------------------------------------------
    database_url: str = Field(
        default="",
        description="PostgreSQL URL; the plain postgresql://user@host:port/db form works. "
        "Empty under `labs-analytics dev`, which starts an embedded server.",
    )
    redis_url: str = Field(
        default="",
        description="Redis URL (redis://host:port/db). Empty under `dev`: embedded server.",
    )
    redis_key_prefix: str = Field(
        default="la:",
        description="Prefix of every Redis key we own, so one Redis can host several deployments.",
    )

    # --- ingest limits -------------------------------------------------------
    max_body_bytes: int = Field(
        default=contract.MAX_BODY_BYTES,
        gt=0,
        description="Request body limit, after decompression.",
    )
    max_events_per_request: int = Field(
        default=contract.MAX_EVENTS_PER_REQUEST,
        gt=0,
        le=10_000,
        description="Events in one request, at most.",
    )
    max_properties_bytes: int = Field(
        default=contract.MAX_PROPERTIES_BYTES,
        gt=0,
        description="Serialized size limit of one event's properties.",
    )
    max_future_skew_seconds: int = Field(
        default=contract.MAX_FUTURE_SKEW_SECONDS,
        ge=0,
        description="Timestamps further ahead than this are refused.",
    )
    clock_skew_max_seconds: int = Field(
        default=86_400,
        ge=0,
        le=30 * 86_400,
        description="A request that says when it was sent (`sent_at`, Segment's `sentAt`) "
        "gets its events' times corrected for the sender's clock skew up to this much; a "
        "larger skew is recorded but not applied.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (comma separated).",
    )
    redis_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Longest wait on one Redis command before answering 503."
    )
    retry_after_seconds: int = Field(
        default=5, ge=1, description="Retry-After sent with 503 when the queue is unavailable."
    )

    # --- connections (every client may be hostile) ----------------------------
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Request line plus headers, at most; larger heads get 431 and are cut off.",
    )
    header_timeout_seconds: float = Field(
        default=10,
        gt=0,
        le=300,
        description="A new connection must send a whole request head within this (else 408).",
    )
    body_timeout_seconds: float = Field(
        default=30,
        gt=0,
        le=600,
        description="A request body must arrive whole within this after its head (else cut off).",
    )
    keep_alive_timeout_seconds: float = Field(
        default=5, gt=0, le=300, description="Idle keep-alive connections are closed after this."
    )
    max_connections: int = Field(
        default=2048,
        ge=16,
        description="Open connections per process, at most; capped below the descriptor limit. "
        "At the cap, connections that never finished a request are closed first.",
    )
    metrics_token: str = Field(
        default="",
        description="If set, GET /metrics requires `Authorization: Bearer <token>`.",
    )

    # --- overload and outages -------------------------------------------------
    backlog_max_events: int = Field(
        default=2_000_000,
        ge=0,
        description="Events waiting in the stream above which ingest answers 503 (0: no limit).",
    )
    redis_memory_max_ratio: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Share of Redis maxmemory above which ingest answers 503.",
    )
    # Bounded like a key's own rate: the token bucket script fails on a rate
    # it cannot use, for every key sharing the call.
    rate_limit_events_per_second: Annotated[float, AfterValidator(check_default_rate_limit)] = (
        Field(
            default=5000,
            ge=0,
            le=MAX_RATE_LIMIT_PER_SECOND,
            allow_inf_nan=False,
            description="Default per-key ingest rate (events/s), shared by all API workers; "
            "a key may carry its own. 0: no limit.",
        )
    )
    rate_limit_burst_seconds: float = Field(
        default=10,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Bucket size as seconds of the key's rate (never below one full request).",
    )
    spool_dir: str = Field(
        default=".data/spool",
        description="Local spool for events accepted while Redis is unreachable ('' disables).",
    )
    spool_max_bytes: int = Field(
        default=512 * 1024 * 1024, gt=0, description="Spool size above which ingest answers 503."
    )
    spool_segment_bytes: int = Field(
        default=16 * 1024 * 1024, gt=0, description="Spool file size before starting a new one."
    )

    # --- auth ----------------------------------------------------------------
    key_cache_refresh_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often API processes reload keys; a revoked key stops working within it.",
    )

    # --- flusher -------------------------------------------------------------
    flush_batch_events: int = Field(default=5000, gt=0, description="Events per flush, at most.")
    flush_interval_ms: int = Field(
        default=500, gt=0, description="Longest wait to fill a batch before flushing what we have."
    )
    standby_flusher_backlog_events: int = Field(
        default=10_000,
        ge=0,
        description="`serve`'s flushers beyond the first stand by while the stream holds fewer "
        "events than this and none has waited 5 s (one flusher keeps up with less, and a second "
        "one flushing beside it takes CPU from the API, BENCHMARKS.md); at this backlog or "
        "more they flush too. 0: every flusher flushes all the time.",
    )
    reclaim_idle_ms: int = Field(
        default=30_000,
        gt=0,
        description="Entries pending this long at another consumer are presumed orphaned "
        "and claimed (XAUTOCLAIM).",
    )
    retry_backoff_initial_ms: int = Field(
        default=100, gt=0, description="First retry delay of a failed flush (full jitter)."
    )
    retry_backoff_max_ms: int = Field(
        default=10_000, gt=0, description="Cap of the exponential retry delay of a failed flush."
    )
    partition_days_ahead: int = Field(
        default=3, ge=1, description="Daily partitions of `events` created ahead of time."
    )
    max_deliveries: int = Field(
        default=5,
        ge=1,
        description="Deliveries of one stream entry before it is dead-lettered unwritten.",
    )
    shutdown_timeout_seconds: float = Field(
        default=20,
        gt=0,
        description="Longest wait on shutdown for requests and the flusher's batch to finish.",
    )
    retention_interval_seconds: float = Field(
        default=86_400,
        ge=0,
        description="How often each flusher process runs raw-data retention (one runner at a "
        "time across processes; the first run a minute after start); 0: never, run "
        "`labs-analytics retention run` yourself.",
    )
    retention_delete_batch_rows: int = Field(
        default=10_000,
        gt=0,
        le=1_000_000,
        description="Rows per DELETE when retention removes expired events batch by batch.",
    )
    identity_window_days: int = Field(
        default=7,
        ge=1,
        le=3650,
        description="An event id is stored once per product whatever timestamps its resends "
        "carry, for at least this many days after it first arrived (the flusher forgets older "
        "ids when it runs retention).",
    )
    rollup_interval_seconds: float = Field(
        default=5,
        ge=0,
        description="How often each flusher process rolls up the hours flushed into since "
        "(reads stay exact meanwhile, only slower); 0: never, run `labs-analytics rollups "
        "refresh` yourself.",
    )
    rollup_settle_seconds: float = Field(
        default=60,
        ge=0,
        description="A marked hour is rolled up once no flush has written into it for this "
        "long: the hour being written now is read raw rather than recomputed at every refresh.",
    )
    rollup_max_buckets: int = Field(
        default=200,
        gt=0,
        le=100_000,
        description="Hours one rollup refresh recomputes at most (one transaction); the rest "
        "wait for the next.",
    )
    rollup_max_defer_seconds: float = Field(
        default=3600,
        ge=0,
        description="The rollup refresh waits while the flushers are behind (ingest at "
        "capacity), but not past this: once the oldest settled mark has waited this long, it "
        "runs anyway and takes its share of the machine. 0: it never waits for the flushers.",
    )
    rollup_properties: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["route", "status_code"],
        description="Property keys (dotted paths) whose events are also counted per hour, "
        "name and value, and per day, value and user, so breakdowns by them (with users) read "
        "a rollup (comma separated; low-cardinality keys only: rollup rows per value and hour, "
        "and per value, user and day). A key added is rolled up from all stored "
        "events by the next refreshes, read raw meanwhile.",
    )
    run_flusher: bool = Field(
        default=True,
        description="Run a flusher in the app's own event loop (create_app); `serve` turns it "
        "off and runs flusher processes instead.",
    )
    # --- the Penn Labs legacy API (POST /analytics) ----------------------------
    platform_jwks_url: str = Field(
        default="",
        description="Penn Labs Platform's JSON Web Key Set: the keys legacy clients' tokens are "
        "checked with (e.g. https://platform.pennlabs.org/identity/jwks/); empty: the legacy "
        "route refuses every token.",
    )
    platform_subjects: Annotated[dict[str, frozenset[str]], NoDecode] = Field(
        default_factory=dict,
        description="Which token subjects may write which products: "
        "`urn:pennlabs:penn-clubs=clubs;urn:pennlabs:penn-mobile=mobile_backend,mobile_ios` "
        "(products among the legacy ones: other, mobile_ios, mobile_android, mobile_backend, "
        "portal, pcr, pdp, pca, pcp, ohq, clubs).",
    )
    platform_jwt_leeway_seconds: float = Field(
        default=30, ge=0, le=600, description="Clock leeway when checking a token's expiry."
    )
    platform_jwks_refresh_seconds: float = Field(
        default=3600,
        gt=0,
        description="How often the key set is fetched again (also whenever a token names a key "
        "it lacks).",
    )
    platform_jwks_min_refetch_seconds: float = Field(
        default=10,
        ge=0,
        description="The key set is fetched at most this often for tokens naming a key it "
        "lacks (a flood of made-up key ids costs Platform one request per this long).",
    )
    # --- read side -----------------------------------------------------------
    query_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600, description="A read query running longer is cancelled."
    )
    read_pool_size: int = Field(
        default=4, ge=1, le=64, description="PostgreSQL connections for reads, per process."
    )
    read_work_mem_mb: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="PostgreSQL work_mem of read sessions, in MB: memory per sort or hash of a "
        "query before it spills to disk (the server's default is 4).",
    )
    read_rate_limit_per_second: float = Field(
        default=10.0, gt=0, le=10_000, description="Read queries a key may start per second."
    )
    # --- dashboard -------------------------------------------------------------
    dashboard_session_seconds: int = Field(
        default=8 * 3600,
        ge=1,
        le=30 * 86400,
        description="A dashboard sign-in lasts this long (the session cookie's lifetime).",
    )
    dashboard_share_max_days: int = Field(
        default=90, ge=1, le=3650, description="The longest expiry a share link may have."
    )
    live_poll_seconds: float = Field(
        default=1.0,
        ge=0.05,
        le=60,
        description="How often GET /v1/live looks for new events (one small query each time).",
    )
    live_max_streams: int = Field(
        default=50, ge=1, le=10_000, description="Open GET /v1/live streams per process."
    )
    live_stream_max_seconds: float = Field(
        default=600,
        ge=0.1,
        le=86400,
        description="A live stream ends after this long; the browser's EventSource reconnects.",
    )
    fast_path: bool = Field(
        default=True,
        description="Answer POST /v1/events before the framework's layers (api/fast_path.py); "
        "false: through the FastAPI route, slower, the same answers.",
    )

    # --- process -------------------------------------------------------------
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    data_dir: str = Field(
        default=".data", description="Where `labs-analytics dev` keeps its embedded servers."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("platform_subjects", mode="before")
    @classmethod
    def _parse_subjects(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_subjects(value)
        return value

    @field_validator("platform_subjects")
    @classmethod
    def _check_subjects(cls, value: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
        known = set(LEGACY_PRODUCTS.values())
        for subject, products in value.items():
            unknown = sorted(products - known)
            if unknown:
                raise ValueError(
                    f"{subject}: {', '.join(unknown)} is not a legacy product "
                    f"({', '.join(sorted(known))})"
                )
        return value

    @field_validator("rollup_properties", mode="before")
    @classmethod
    def _split_properties(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("rollup_properties")
    @classmethod
    def _check_properties(cls, keys: list[str]) -> list[str]:
        for key in keys:
            parse_field(f"prop:{key}")  # its ValueError names what is wrong
        return list(dict.fromkeys(keys))

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value:
            try:
                url = make_url(value)
            except ArgumentError as exc:
                raise ValueError("DATABASE_URL must be a postgresql:// URL") from exc
            if url.get_backend_name() not in ("postgresql", "postgres"):
                raise ValueError("DATABASE_URL must be a postgresql:// URL")
        return value

    @property
    def sqlalchemy_url(self) -> URL:
        """The database URL with the asyncpg driver, whatever form was configured."""
        return to_sqlalchemy_url(self.database_url)

    @property
    def asyncpg_dsn(self) -> str:
        """The database URL as libpq/asyncpg understands it (no driver suffix)."""
        return to_asyncpg_dsn(self.database_url)

    @property
    def stream_key(self) -> str:
        return f"{self.redis_key_prefix}events"

    @property
    def consumer_group(self) -> str:
        return "flushers"

    @property
    def backlog_key(self) -> str:
        """Events in the stream not yet flushed, kept by the producer and the flusher."""
        return f"{self.redis_key_prefix}backlog"

    @property
    def dead_letter_stream_key(self) -> str:
        """Dead letters waiting for PostgreSQL (written there while it is down)."""
        return f"{self.redis_key_prefix}dead"

    def rate_limit_key(self, key_id: str) -> str:
        return f"{self.redis_key_prefix}rate:{key_id}"


def to_sqlalchemy_url(database_url: str) -> URL:
    if not database_url:
        raise ValueError("DATABASE_URL is not set")
    return make_url(database_url).set(drivername="postgresql+asyncpg")


def to_asyncpg_dsn(database_url: str) -> str:
    return (
        to_sqlalchemy_url(database_url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )
