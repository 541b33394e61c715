"""Running the Alembic migrations from code (the CLI, `dev`, the test session)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from labs_analytics.settings import to_asyncpg_dsn

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def migrations_dir() -> Path:
    """``alembic/`` of a checkout (editable install), else the copy inside the wheel."""
    checkout = _PACKAGE_DIR.parents[1] / "alembic"
    if (checkout / "env.py").exists():
        return checkout
    return _PACKAGE_DIR / "_alembic"


def alembic_config(database_url: str | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("file_template", "%%(year)d-%%(month).2d-%%(day).2d_%%(slug)s")
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


def upgrade_sql(database_url: str | None) -> None:
    """Print the SQL of every migration to stdout; connect to nothing."""
    command.upgrade(alembic_config(database_url), "head", sql=True)


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    current: str | None
    head: str | None

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def status(database_url: str) -> MigrationStatus:
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    return MigrationStatus(current=asyncio.run(_current_revision(database_url)), head=head)


async def _current_revision(database_url: str) -> str | None:
    conn = await asyncpg.connect(to_asyncpg_dsn(database_url), timeout=5)
    try:
        exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
        if not exists:
            return None
        revision: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
        return revision
    finally:
        await conn.close()
