"""The data set: a `Shape`, one day of it as COPY text, and loading it all in parallel.

Deterministic: day ``k`` is generated from ``random.Random((seed, k))`` alone,
so the same shape gives the same rows whichever process generates which day.

What it looks like, and why (the read paths care about skew, not averages):

- products of unequal size (`PRODUCTS`), each with its own users (their
  shares of ``users``);
- a user is active on a day with a probability that falls with their rank
  (the heaviest on ~90% of days, the long tail on a few), and among a day's
  active users events go Zipf-like by rank;
- 20 names: ``http.request`` a fixed ~20%, the other 19 Zipf-like;
- ``http.request`` carries ``route`` (30, Zipf-like), ``method``,
  ``status_code`` (mostly 200, some 3xx/4xx/5xx) and ``duration_ms``
  (lognormal around a per-route median);
- properties of realistic cardinality: ``club_id`` (600 clubs, Zipf-like) on
  the club events, ``path`` on page views, ``course`` (400), ``referrer`` (12);
  a ``context`` per user (platform, app version);
- ~8% of events have no user; weekends are quieter, afternoons busier, and
  the volume grows ~30% over the range.

Rows go in by COPY (text format) straight into ``events``, into daily
partitions created first; several days are generated at once in worker
processes while others are copied.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import functools
import io
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from labs_analytics.storage.bulk_writer import STAGING_COLUMNS
from labs_analytics.storage.partitions import partition_ddl

DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
T = TypeVar("T")

PRODUCTS: tuple[tuple[str, float], ...] = (
    ("clubs", 0.40),
    ("penn-courses", 0.25),
    ("penn-mobile", 0.18),
    ("ohq", 0.11),
    ("portal", 0.06),
)
HTTP_REQUEST = "http.request"
HTTP_SHARE = 0.20
ANONYMOUS_SHARE = 0.08
# Zipf-like by position, most popular first.
NAMES = (
    "page.view",
    "club.view",
    "session.start",
    "search",
    "button.click",
    "course.view",
    "club.apply",
    "notification.open",
    "login",
    "club.join",
    "favorite.add",
    "schedule.update",
    "review.submit",
    "share",
    "signup",
    "profile.update",
    "office_hours.join",
    "message.send",
    "logout",
)
CLUB_NAMES = frozenset(
    {"club.view", "club.apply", "club.join", "favorite.add", "review.submit", "share"}
)
FUNNEL = ("club.view", "club.apply", "club.join")
CLUBS = 600
COURSES = 400
REFERRERS = (
    "direct", "google", "instagram", "newsletter", "reddit", "facebook",
    "twitter", "linkedin", "canvas", "email", "bing", "tiktok",
)  # fmt: skip
SCREENS = ("home", "explore", "profile", "settings", "calendar", "inbox", "search", "detail")
PLATFORMS = (("web", 0.55), ("ios", 0.30), ("android", 0.15))
APP_VERSIONS = ("4.0.0", "4.1.0", "4.1.2", "4.2.0", "4.2.1", "4.3.0", "4.3.1", "5.0.0")
# (route, method, median ms): the first the busiest.
ROUTES: tuple[tuple[str, str, float], ...] = tuple(
    (route, method, median)
    for route, method, median in (
        ("/api/clubs", "GET", 45),
        ("/api/clubs/{id}", "GET", 30),
        ("/api/auth/token", "POST", 80),
        ("/api/courses/search", "GET", 120),
        ("/api/courses/{id}", "GET", 35),
        ("/api/users/me", "GET", 15),
        ("/api/events", "GET", 60),
        ("/api/clubs/{id}/members", "GET", 90),
        ("/api/notifications", "GET", 25),
        ("/api/schedule", "GET", 70),
        ("/api/clubs/{id}/apply", "POST", 150),
        ("/api/favorites", "POST", 40),
        ("/api/search", "GET", 200),
        ("/api/portal/posts", "GET", 55),
        ("/api/ohq/queues", "GET", 35),
        ("/api/ohq/queues/{id}/join", "POST", 110),
        ("/api/courses/{id}/reviews", "GET", 140),
        ("/api/reviews", "POST", 180),
        ("/api/dining/menus", "GET", 300),
        ("/api/laundry/rooms", "GET", 250),
        ("/api/gsr/availability", "GET", 400),
        ("/api/gsr/book", "POST", 350),
        ("/api/fitness/usage", "GET", 220),
        ("/api/news", "GET", 95),
        ("/api/calendar", "GET", 65),
        ("/api/messages", "GET", 50),
        ("/api/messages", "POST", 75),
        ("/api/uploads", "POST", 420),
        ("/api/admin/reports", "GET", 900),
        ("/api/health", "GET", 3),
    )
)
STATUS_CODES = (
    (200, 0.880), (201, 0.030), (304, 0.020), (400, 0.015), (401, 0.010), (403, 0.005),
    (404, 0.025), (429, 0.005), (500, 0.007), (502, 0.002), (503, 0.001),
)  # fmt: skip
DURATION_SIGMA = 0.6
# Hours of the (UTC) day, quiet at night, busiest in the afternoon and evening.
HOUR_WEIGHTS = (
    3, 2, 1.5, 1, 1, 1.5, 3, 5, 7, 8, 8.5, 9, 9.5, 10, 10, 10, 9.5, 9, 9, 9.5, 9, 8, 6, 4.5,
)  # fmt: skip

# The columns the flusher writes, in its order (``batch_id`` stays NULL: no batch wrote these),
# less the clock-skew pair: generated clients never say when they sent.
COLUMNS = tuple(
    name for name in STAGING_COLUMNS if name not in ("corrected_timestamp", "clock_skew_ms")
)


@dataclass(frozen=True)
class Shape:
    """What to generate: ``events`` over the ``days`` before ``end`` (a UTC hour)."""

    events: int
    end: dt.datetime
    days: int = 90
    users: int = 50_000
    seed: int = 20_261_203

    @property
    def start(self) -> dt.datetime:
        return self.end - self.days * DAY

    def day_counts(self) -> list[int]:
        """Events per generated day: weekends at 60%, growing ~30% over the range."""
        weights = []
        for k in range(self.days):
            weekend = (self.start + k * DAY).weekday() >= 5
            weights.append((0.6 if weekend else 1.0) * (1 + 0.3 * k / max(1, self.days - 1)))
        total = sum(weights)
        counts = [math.floor(self.events * w / total) for w in weights]
        counts[-1] += self.events - sum(counts)
        return counts


def cumulative(weights: Sequence[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def zipf(n: int, exponent: float = 1.0, offset: float = 1.0) -> list[float]:
    """Cumulative Zipf-like weights of ranks 0..n-1."""
    return cumulative([1 / (rank + offset) ** exponent for rank in range(n)])


def pick(rng: random.Random, population: Sequence[T], cum: Sequence[float]) -> T:
    return population[bisect.bisect(cum, rng.random() * cum[-1], 0, len(cum) - 1)]


@dataclass(frozen=True)
class ProductUsers:
    product: str
    ids: tuple[str, ...]  # most active first
    daily_probability: tuple[float, ...]  # of being active on a given day
    cum_activity: tuple[float, ...]  # Zipf-like by rank: events among the day's active users
    contexts: tuple[str, ...]  # the COPY text of each user's ``context``


@functools.cache
def product_users(shape: Shape) -> tuple[ProductUsers, ...]:
    """Each product's users: ids, how often each is active, how much, their context."""
    rng = random.Random(f"{shape.seed}:users")
    products = []
    first = 0
    for product, share in PRODUCTS:
        n = max(1, round(shape.users * share))
        ids = tuple(f"u{index:06d}" for index in range(first, first + n))
        first += n
        probability = tuple(0.04 + 0.86 * (1 - rank / n) ** 3 for rank in range(n))
        activity = [1 / (rank + 10) ** 0.8 for rank in range(n)]
        platforms = [p for p, _ in PLATFORMS]
        platform_cum = cumulative([w for _, w in PLATFORMS])
        contexts = tuple(
            f'{{"platform": "{pick(rng, platforms, platform_cum)}", '
            f'"app_version": "{rng.choice(APP_VERSIONS)}"}}'
            for _ in range(n)
        )
        products.append(
            ProductUsers(product, ids, probability, tuple(cumulative(activity)), contexts)
        )
    return tuple(products)


class _Properties:
    """The ``properties`` text of an event, by name (JSON written by hand: no escapes needed)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.names = (HTTP_REQUEST, *NAMES)
        self.cum_names = cumulative(
            [HTTP_SHARE] + [(1 - HTTP_SHARE) * w for w in _shares(len(NAMES), 1.0)]
        )
        self.cum_routes = zipf(len(ROUTES), 1.1)
        self.cum_status = cumulative([w for _, w in STATUS_CODES])
        self.cum_clubs = zipf(CLUBS, 1.0, 3)
        self.cum_courses = zipf(COURSES, 0.9, 5)
        self.cum_referrers = zipf(len(REFERRERS), 1.2)
        self.by_name: dict[str, Callable[[], str]] = {
            HTTP_REQUEST: self.http_request,
            "page.view": self.page_view,
            "course.view": self.course,
            "review.submit": self.club,
            "search": self.search,
            **{name: self.club for name in CLUB_NAMES},
        }

    def name(self) -> str:
        return pick(self.rng, self.names, self.cum_names)

    def of(self, name: str) -> str:
        make = self.by_name.get(name)
        return make() if make is not None else self.screen()

    def http_request(self) -> str:
        rng = self.rng
        route, method, median = pick(rng, ROUTES, self.cum_routes)
        status = STATUS_CODES[bisect.bisect(self.cum_status, rng.random() * self.cum_status[-1])][0]
        duration = rng.lognormvariate(math.log(median), DURATION_SIGMA)
        return (
            f'{{"route": "{route}", "method": "{method}", "status_code": {status}, '
            f'"duration_ms": {duration:.1f}}}'
        )

    def page_view(self) -> str:
        club = bisect.bisect(self.cum_clubs, self.rng.random() * self.cum_clubs[-1])
        referrer = pick(self.rng, REFERRERS, self.cum_referrers)
        return f'{{"path": "/clubs/{club}", "referrer": "{referrer}"}}'

    def club(self) -> str:
        club = bisect.bisect(self.cum_clubs, self.rng.random() * self.cum_clubs[-1])
        return f'{{"club_id": "club-{club}", "source": "{self.rng.choice(SCREENS)}"}}'

    def course(self) -> str:
        course = bisect.bisect(self.cum_courses, self.rng.random() * self.cum_courses[-1])
        return f'{{"course": "CIS-{1000 + course}"}}'

    def search(self) -> str:
        rng = self.rng
        return f'{{"query_length": {rng.randint(1, 40)}, "results": {rng.randint(0, 200)}}}'

    def screen(self) -> str:
        return f'{{"screen": "{self.rng.choice(SCREENS)}"}}'


def _shares(n: int, exponent: float) -> list[float]:
    raw = [1 / (rank + 1) ** exponent for rank in range(n)]
    total = sum(raw)
    return [w / total for w in raw]


def day_rows(shape: Shape, day: int) -> bytes:
    """Day ``day`` (0-based) of ``shape`` as COPY text, columns `COLUMNS`."""
    rng = random.Random(f"{shape.seed}:{day}")
    count = shape.day_counts()[day]
    day_start = shape.start + day * DAY
    hour_prefixes = [f"{day_start + h * HOUR:%Y-%m-%d %H}:" for h in range(24)]
    cum_hours = cumulative([HOUR_WEIGHTS[(day_start + h * HOUR).hour] for h in range(24)])
    properties = _Properties(rng)
    out = io.StringIO()
    write = out.write
    products = product_users(shape)
    cum_products = cumulative([share for _, share in PRODUCTS])
    # Events per product by their shares, the same way every day.
    per_product = [math.floor(count * share / cum_products[-1]) for _, share in PRODUCTS]
    per_product[0] += count - sum(per_product)
    for users, n in zip(products, per_product, strict=True):
        active = [i for i, p in enumerate(users.daily_probability) if rng.random() < p] or [0]
        active_cum = cumulative(
            [users.cum_activity[i] - (users.cum_activity[i - 1] if i else 0) for i in active]
        )
        chosen = rng.choices(active, cum_weights=active_cum, k=n)
        product = users.product
        for user_index in chosen:
            micros = int(rng.random() * 3_600_000_000)
            minutes, rest = divmod(micros, 60_000_000)
            seconds, micro = divmod(rest, 1_000_000)
            hour = bisect.bisect(cum_hours, rng.random() * cum_hours[-1], 0, 23)
            timestamp = f"{hour_prefixes[hour]}{minutes:02d}:{seconds:02d}.{micro:06d}+00"
            name = properties.name()
            if rng.random() < ANONYMOUS_SHARE:
                user, context = "\\N", "\\N"
            else:
                user, context = users.ids[user_index], users.contexts[user_index]
            write(
                f"{timestamp}\t{rng.getrandbits(128):032x}\t{product}\t{name}\t{user}\t"
                f"{properties.of(name)}\t{context}\t{timestamp}\n"
            )
    return out.getvalue().encode()


# --- loading ------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


async def create_partitions(conn: asyncpg.Connection, shape: Shape) -> None:
    """Every UTC day the data touches gets its partition first (else: events_default)."""
    day = shape.start.date()
    while day <= (shape.end + DAY).date():
        await conn.execute(partition_ddl(day))
        day += DAY


async def load(dsn: str, shape: Shape, *, generators: int = 2, copiers: int = 2) -> Loaded:
    """Generate and COPY every day of ``shape``, printing the rate every ~10%."""
    conn = await asyncpg.connect(dsn)
    try:
        await create_partitions(conn, shape)
    finally:
        await conn.close()
    counts = shape.day_counts()
    queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(maxsize=copiers)
    copied = 0
    started = time.monotonic()
    next_report = 0.1

    async def copier() -> None:
        nonlocal copied, next_report
        conn = await asyncpg.connect(dsn, server_settings={"synchronous_commit": "off"})
        try:
            while (item := await queue.get()) is not None:
                day, data = item
                await conn.copy_to_table(
                    "events", source=io.BytesIO(data), columns=list(COLUMNS), format="text"
                )
                copied += counts[day]
                if copied >= next_report * shape.events:
                    elapsed = time.monotonic() - started
                    print(
                        f"    load: {copied:,} rows ({copied / shape.events:.0%}), "
                        f"{copied / elapsed:,.0f} rows/s",
                        flush=True,
                    )
                    next_report = math.floor(copied / shape.events * 10 + 1) / 10
        finally:
            await conn.close()

    async def producer(pool: ProcessPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        pending: deque[tuple[int, asyncio.Future[bytes]]] = deque()
        for day in range(shape.days):
            pending.append((day, loop.run_in_executor(pool, day_rows, shape, day)))
            if len(pending) >= generators:
                first, future = pending.popleft()
                await queue.put((first, await future))
        while pending:
            first, future = pending.popleft()
            await queue.put((first, await future))
        for _ in range(copiers):
            await queue.put(None)

    with ProcessPoolExecutor(generators) as pool:
        await asyncio.gather(producer(pool), *(copier() for _ in range(copiers)))
    return Loaded(rows=copied, seconds=time.monotonic() - started)
