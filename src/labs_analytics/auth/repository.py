"""API keys in PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from labs_analytics.auth.keys import (
    ApiKey,
    NewKey,
    Scope,
    check_label,
    check_product,
    check_rate_limit,
    generate_key,
)
from labs_analytics.storage.tables import api_keys


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    product: str
    scopes: list[str]
    label: str
    created_at: datetime
    revoked_at: datetime | None
    rate_limit_per_second: float | None


class KeyRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self,
        *,
        product: str,
        scopes: Iterable[Scope],
        label: str = "",
        rate_limit_per_second: float | None = None,
    ) -> NewKey:
        """Create a key; raise ``InvalidKeyField`` for a product, label or rate it may not have.

        Checked here and not only in the CLI: every caller (``dev``, tests,
        scripts) must get the same refusal, and PostgreSQL's CHECK on the rate
        is the last line, not the first.
        """
        check_product(product)
        check_label(label)
        check_rate_limit(rate_limit_per_second)
        new_key = generate_key()
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(api_keys).values(
                    key_id=new_key.key_id,
                    product=product,
                    scopes=sorted(str(scope) for scope in set(scopes)),
                    key_hash=new_key.key_hash,
                    label=label,
                    rate_limit_per_second=rate_limit_per_second,
                )
            )
        return new_key

    async def list_keys(self, *, product: str | None = None) -> list[KeyInfo]:
        query = select(
            api_keys.c.key_id,
            api_keys.c.product,
            api_keys.c.scopes,
            api_keys.c.label,
            api_keys.c.created_at,
            api_keys.c.revoked_at,
            api_keys.c.rate_limit_per_second,
        ).order_by(api_keys.c.created_at)
        if product is not None:
            query = query.where(api_keys.c.product == product)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [KeyInfo(*row) for row in rows]

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key; False if there is no such active key."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        return bool(result.rowcount)

    async def load_active(self) -> list[ApiKey]:
        query = select(
            api_keys.c.key_id,
            api_keys.c.product,
            api_keys.c.scopes,
            api_keys.c.key_hash,
            api_keys.c.rate_limit_per_second,
        ).where(api_keys.c.revoked_at.is_(None))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            ApiKey(
                key_id=row.key_id,
                product=row.product,
                scopes=frozenset(Scope(s) for s in row.scopes if s in Scope.__members__.values()),
                key_hash=row.key_hash,
                rate_limit_per_second=row.rate_limit_per_second,
            )
            for row in rows
        ]
