"""Dashboard sign-in sessions and read-only share links, kept in Redis.

A session is what a browser holds instead of an API key: a random token in an
HttpOnly, SameSite=Strict cookie. Redis keeps only the token's SHA-256 with
what the session may do: the key's public id and its hash (never the key), or
the share link it came from, and a CSRF token the page sends back with every
request that is not a GET. Every use checks again that the key is still
active (the key cache) or the share link still exists, so revoking either
ends its sessions at once, not when they expire.

A share link reads ``las_<share_id>_<secret>``, like an API key: the id names
it in lists, only the secret's hash is stored, and the comparison is constant
time. It opens a read-only session for one product; an admin revokes it by id.

Redis rather than PostgreSQL: the pipeline panel is what an operator looks at
while PostgreSQL is down, so signing in must not need it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from labs_analytics.auth.cache import KeyCache
from labs_analytics.auth.keys import ApiKey, Scope

SESSION_COOKIE = "la_session"
CSRF_HEADER = "X-CSRF-Token"
_SHARE_TOKEN = re.compile(r"las_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})")
_SESSION_TOKEN = re.compile(r"[A-Za-z0-9_\-]{43}")
MAX_SHARES_LISTED = 1_000


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    product: str
    csrf: str
    expires_at: float  # Unix seconds
    key_id: str | None = None  # signed in with a key
    key_hash: str | None = None
    share_id: str | None = None  # opened from a share link

    @property
    def is_share(self) -> bool:
        return self.share_id is not None


@dataclass(frozen=True, slots=True)
class ShareLink:
    share_id: str
    product: str
    created_by: str  # the admin key's public id
    created_at: float
    expires_at: float
    token_hash: str


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who a session reads as: the key it checks (a share link's is read-only)."""

    session: Session
    key: ApiKey


class DashboardSessions:
    def __init__(
        self, redis: Redis, key_cache: KeyCache, *, prefix: str, session_seconds: int
    ) -> None:
        self._redis = redis
        self._keys = key_cache
        self._prefix = f"{prefix}dashboard:"
        self.session_seconds = session_seconds

    # --- sessions

    async def sign_in(self, key: ApiKey) -> tuple[str, Session]:
        """A new session for a key allowed to read; its cookie token."""
        session = Session(
            product=key.product,
            csrf=secrets.token_urlsafe(32),
            expires_at=time.time() + self.session_seconds,
            key_id=key.key_id,
            key_hash=key.key_hash,
        )
        return await self._store(session), session

    async def open_share(self, token: str) -> tuple[str, Session] | None:
        """A read-only session from a share link, or None if it is unknown, expired or revoked."""
        share = await self._share_for_token(token)
        if share is None:
            return None
        session = Session(
            product=share.product,
            csrf=secrets.token_urlsafe(32),
            expires_at=min(share.expires_at, time.time() + self.session_seconds),
            share_id=share.share_id,
        )
        return await self._store(session), session

    async def _store(self, session: Session) -> str:
        token = secrets.token_urlsafe(32)
        seconds = max(1, int(session.expires_at - time.time()))
        await self._redis.set(self._session_key(token), orjson.dumps(asdict(session)), ex=seconds)
        return token

    async def resolve(self, token: str) -> Viewer | None:
        """The session behind a cookie, if it, and the key or link it came from, still hold."""
        if not _SESSION_TOKEN.fullmatch(token):
            return None
        raw = await self._redis.get(self._session_key(token))
        if raw is None:
            return None
        session = Session(**orjson.loads(raw))
        if session.expires_at <= time.time():
            return None
        if session.share_id is not None:
            share = await self._share(session.share_id)
            if share is None or share.product != session.product:
                return None
            return Viewer(session, _share_key(share))
        key = self._keys.get(session.key_id or "")
        if (
            key is None
            or session.key_hash is None
            or not hmac.compare_digest(key.key_hash, session.key_hash)
            or not key.allows(Scope.READ)
        ):
            return None  # revoked since, or its scopes changed
        return Viewer(session, key)

    async def sign_out(self, token: str) -> None:
        if _SESSION_TOKEN.fullmatch(token):
            await self._redis.delete(self._session_key(token))

    def _session_key(self, token: str) -> str:
        return f"{self._prefix}session:{_sha256(token)}"

    # --- share links

    async def create_share(
        self, *, product: str, expires_in_seconds: int, created_by: str
    ) -> tuple[str, ShareLink]:
        share_id = secrets.token_hex(6)
        token = f"las_{share_id}_{secrets.token_urlsafe(32)}"
        now = time.time()
        share = ShareLink(
            share_id=share_id,
            product=product,
            created_by=created_by,
            created_at=now,
            expires_at=now + expires_in_seconds,
            token_hash=_sha256(token),
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._share_key(share_id), orjson.dumps(asdict(share)), ex=expires_in_seconds)
            pipe.zadd(self._shares_index, {share_id: share.expires_at})
            await pipe.execute()
        return token, share

    async def list_shares(self, product: str | None = None) -> list[ShareLink]:
        """Active links, soonest to expire first; one product's, or all (None)."""
        await self._redis.zremrangebyscore(self._shares_index, "-inf", time.time())
        ids: Any = await self._redis.zrange(self._shares_index, 0, MAX_SHARES_LISTED - 1)
        shares = [await self._share(share_id.decode()) for share_id in ids]
        return [s for s in shares if s is not None and (product is None or s.product == product)]

    async def revoke_share(self, share_id: str) -> ShareLink | None:
        """Remove a link (its sessions stop at their next request); the link, if it existed."""
        share = await self._share(share_id)
        if share is None:
            return None
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._share_key(share_id))
            pipe.zrem(self._shares_index, share_id)
            await pipe.execute()
        return share

    async def _share_for_token(self, token: str) -> ShareLink | None:
        match = _SHARE_TOKEN.fullmatch(token)
        if match is None:
            return None
        share = await self._share(match.group(1))
        if share is None or not hmac.compare_digest(share.token_hash, _sha256(token)):
            return None
        return share

    async def _share(self, share_id: str) -> ShareLink | None:
        if not re.fullmatch(r"[0-9a-f]{12}", share_id):
            return None
        raw = await self._redis.get(self._share_key(share_id))
        if raw is None:
            return None
        share = ShareLink(**orjson.loads(raw))
        return share if share.expires_at > time.time() else None

    def _share_key(self, share_id: str) -> str:
        return f"{self._prefix}share:{share_id}"

    @property
    def _shares_index(self) -> str:
        return f"{self._prefix}shares"


def _share_key(share: ShareLink) -> ApiKey:
    """What a share link reads as: its product, the read scope only, a rate bucket of its own."""
    return ApiKey(
        key_id=f"share_{share.share_id}",
        product=share.product,
        scopes=frozenset({Scope.READ}),
        key_hash="",
    )
