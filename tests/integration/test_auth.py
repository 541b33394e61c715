"""API keys: hashed at rest, revocable within the refresh interval, never waiting on PostgreSQL."""

from __future__ import annotations

import hashlib

import asyncpg

from labs_analytics.auth.keys import Scope
from labs_analytics.auth.repository import KeyRepository
from labs_analytics.storage.database import create_engine
from tests.helpers import ApiFactory, create_key, make_event, wait_for_key_cache_reloads


async def test_keys_are_stored_only_as_hashes(api: ApiFactory, db: asyncpg.Connection) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
    rows = await db.fetch("SELECT * FROM api_keys")
    assert len(rows) == 1
    stored = " ".join(str(value) for value in rows[0].values())
    secret = key.split("_", 2)[2]
    assert secret not in stored
    assert rows[0]["key_hash"] == hashlib.sha256(key.encode()).hexdigest()


async def test_a_new_key_works_at_once(api: ApiFactory) -> None:
    async with api(run_flusher=False, key_cache_refresh_seconds=3600) as app:
        key = await create_key(app.settings)  # created after the cache loaded
        assert (await app.post(make_event(), key)).status_code == 202


async def test_revoked_key_is_refused_within_the_refresh_interval(api: ApiFactory) -> None:
    async with api(run_flusher=False, key_cache_refresh_seconds=0.5) as app:
        key = await create_key(app.settings)
        assert (await app.post(make_event(), key)).status_code == 202

        engine = create_engine(app.settings.database_url)
        try:
            assert await KeyRepository(engine).revoke(key.split("_")[1])
        finally:
            await engine.dispose()

        # The cache's own background reload, the next one that read the table after
        # the revocation: nothing else (no request, no refresh() call) reloads it.
        await wait_for_key_cache_reloads(app.app.state.labs.key_cache)
        response = await app.post(make_event(), key)
        assert response.status_code == 401
        assert "revoked" in response.json()["message"]


async def test_revoking_an_unknown_key_reports_false(api: ApiFactory) -> None:
    async with api(run_flusher=False) as app:
        engine = create_engine(app.settings.database_url)
        try:
            assert not await KeyRepository(engine).revoke("000000000000")
        finally:
            await engine.dispose()


async def test_key_scopes_are_kept(api: ApiFactory) -> None:
    async with api(run_flusher=False) as app:
        await create_key(app.settings, product="clubs", scopes=[Scope.READ, Scope.INGEST])
        engine = create_engine(app.settings.database_url)
        try:
            [info] = await KeyRepository(engine).list_keys(product="clubs")
        finally:
            await engine.dispose()
    assert info.scopes == ["ingest", "read"]
    assert info.revoked_at is None
