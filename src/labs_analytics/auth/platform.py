"""Penn Labs Platform tokens: RS256 JWTs checked against Platform's key set.

The legacy route (``api.legacy``) takes ``Authorization: Bearer <JWT>`` as
django-labs-accounts sends it. A token is accepted when its signature
verifies with a key of the set at ``PLATFORM_JWKS_URL`` (RS256 only), it has
not expired (``PLATFORM_JWT_LEEWAY_SECONDS`` of leeway), its ``use`` claim is
``access`` (the legacy engine took refresh tokens too), and its subject is
listed in ``PLATFORM_SUBJECTS``, which names the products it may write.

The key set is fetched once at start, again in the background every
``PLATFORM_JWKS_REFRESH_SECONDS``, and when a token names a key id (``kid``)
the set does not hold (Platform rotated its keys). Never on the request path
while a set is cached: a request with an unknown ``kid`` schedules a fetch
(one at a time, at most one per ``PLATFORM_JWKS_MIN_REFETCH_SECONDS``, so a
flood of made-up key ids costs Platform nothing more) and is answered 503
with ``Retry-After``; once a fetch made after that ``kid`` was first seen
has come back without it, the answer is 401. Only when no set could be
fetched yet does a request wait for the fetch (bounded by
``FETCH_TIMEOUT_SECONDS``).

Verified tokens are cached until they expire (``MAX_CACHED_TOKENS`` of
them), so RS256 is not paid per request.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from labs_analytics.errors import Forbidden, QueueUnavailable, Unauthenticated
from labs_analytics.logs import get_logger

log = get_logger(__name__)

FETCH_TIMEOUT_SECONDS = 5.0
MAX_MISSING_KIDS = 1000  # unknown key ids remembered (when first seen)
MAX_CACHED_TOKENS = 10_000
MAX_TOKEN_BYTES = 8 * 1024
ALGORITHMS = ["RS256"]


class KeySetUnavailable(QueueUnavailable):
    """No key to check the token with yet: retry shortly."""

    code = "key_set_unavailable"


@dataclass(frozen=True, slots=True)
class PlatformClient:
    """A verified token's caller: its subject and the products it may write."""

    subject: str
    products: frozenset[str]
    expires_at: float


def parse_subjects(text: str) -> dict[str, frozenset[str]]:
    """``urn:a=clubs;urn:b=mobile_backend,mobile_ios`` as {subject: products}."""
    subjects: dict[str, frozenset[str]] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        subject, separator, products = part.partition("=")
        names = frozenset(name.strip() for name in products.split(",") if name.strip())
        if not separator or not subject.strip() or not names:
            raise ValueError(
                f"{part.strip()[:80]!r}: write SUBJECT=product[,product] (';' between subjects)"
            )
        subjects[subject.strip()] = names
    return subjects


class PlatformVerifier:
    def __init__(
        self,
        jwks_url: str,
        subjects: dict[str, frozenset[str]],
        *,
        leeway_seconds: float,
        refresh_seconds: float,
        min_refetch_seconds: float,
        retry_after_seconds: int,
    ) -> None:
        self._url = jwks_url
        self._subjects = subjects
        self._leeway = leeway_seconds
        self._refresh_seconds = refresh_seconds
        self._retry_after = retry_after_seconds
        self._min_refetch = min_refetch_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._started_at = float("-inf")  # the last fetch's start (monotonic)
        self._answered_at = float("-inf")  # the start of the last fetch that came back
        self._fetch: asyncio.Task[None] | None = None
        self._missing: OrderedDict[str, float] = OrderedDict()
        self._tokens: OrderedDict[str, PlatformClient] = OrderedDict()
        self.fetches = 0  # key-set requests made (for /metrics and tests)

    @property
    def configured(self) -> bool:
        return bool(self._url)

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch the key set now and every ``refresh_seconds`` until ``stop``."""
        while not stop.is_set():
            await self._refetch()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._refresh_seconds)
            except TimeoutError:
                continue

    async def verify(self, authorization: str | None) -> PlatformClient:
        """The caller of an ``Authorization: Bearer <JWT>`` header, or an AppError."""
        if not self.configured:
            raise Unauthenticated("Platform tokens are not accepted here (PLATFORM_JWKS_URL unset)")
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing token: send `Authorization: Bearer <Platform JWT>`")
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(f"the token is over {MAX_TOKEN_BYTES} bytes")
        cached = self._tokens.get(token)
        now = time.time()
        if cached is not None:
            if now <= cached.expires_at + self._leeway:
                return cached
            del self._tokens[token]
        client = await self._verify_uncached(token, now)
        self._tokens[token] = client
        if len(self._tokens) > MAX_CACHED_TOKENS:
            self._tokens.popitem(last=False)
        return client

    async def _verify_uncached(self, token: str, now: float) -> PlatformClient:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"not a JWT: {exc}") from None
        kid = header.get("kid")
        if header.get("alg") not in ALGORITHMS:
            raise Unauthenticated("the token must be signed RS256")
        key = await self._key(kid if isinstance(kid, str) else None)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=ALGORITHMS,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is not valid: {exc}") from None
        if claims.get("use") != "access":
            raise Unauthenticated("the token is not an access token (its `use` must be `access`)")
        subject = claims["sub"]
        products = self._subjects.get(subject) if isinstance(subject, str) else None
        if not products:
            raise Forbidden(f"subject {str(subject)[:100]!r} may not write analytics here")
        return PlatformClient(subject, products, float(claims["exp"]))

    async def _key(self, kid: str | None) -> jwt.PyJWK:
        if not self._keys:
            # Nothing cached: the only case a request waits for the fetch.
            await self._refetch()
            if not self._keys:
                raise KeySetUnavailable(
                    "Platform's key set could not be fetched; retry later",
                    retry_after_seconds=self._retry_after,
                )
        key = self._find(kid)
        if key is not None:
            return key
        now = time.monotonic()
        first_seen = self._missing.setdefault(kid or "", now)
        if len(self._missing) > MAX_MISSING_KIDS:
            self._missing.popitem(last=False)
        if self._answered_at > first_seen:
            raise Unauthenticated("the token's signing key is not in Platform's key set")
        wait = max(0.0, self._started_at + self._min_refetch - now)
        self._start_refetch(delay=wait)
        raise KeySetUnavailable(
            "the token's signing key is not known yet (the key set is being fetched again); "
            "retry shortly",
            retry_after_seconds=max(1, math.ceil(wait + FETCH_TIMEOUT_SECONDS / 5)),
        )

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get(kid)
        # A token without a kid: only a set of one key says which to use.
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    def _start_refetch(self, delay: float = 0.0) -> None:
        if self._fetch is None or self._fetch.done():
            self._fetch = asyncio.create_task(self._fetch_keys(delay))

    async def _refetch(self) -> None:
        """Fetch, or join the fetch in flight (one at a time)."""
        self._start_refetch()
        assert self._fetch is not None
        await asyncio.shield(self._fetch)

    async def _fetch_keys(self, delay: float = 0.0) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        self.fetches += 1
        started = self._started_at = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS) as client:
                response = await client.get(self._url)
                response.raise_for_status()
                data = response.json()
            key_set = jwt.PyJWKSet.from_dict(data)
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            # Keep the keys we have: a Platform outage must not lock everyone out.
            log.warning("platform.jwks_fetch_failed", url=self._url, error=str(exc)[:300])
            return
        self._keys = {key.key_id or f"#{n}": key for n, key in enumerate(key_set.keys)}
        self._answered_at = started
        for kid in self._keys:
            self._missing.pop(kid, None)
        log.info("platform.jwks_fetched", keys=len(self._keys))
