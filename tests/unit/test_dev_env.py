"""Where commands find the servers: the environment, then `.env`, then `.data/dev.env`."""

from __future__ import annotations

from pathlib import Path

import pytest

from labs_analytics.settings import DEV_ENV_FILE, ENV_FILE, Settings


@pytest.fixture(autouse=True)
def in_a_project_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A folder of our own as the current one, and no settings in the environment."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / Path(DEV_ENV_FILE).parent).mkdir()
    return tmp_path


def write(path: str, **values: str) -> None:
    Path(path).write_text("".join(f"{name}={value}\n" for name, value in values.items()))


def test_the_urls_dev_wrote_are_found_from_the_same_folder() -> None:
    write(DEV_ENV_FILE, DATABASE_URL="postgresql://dev@127.0.0.1:41234/db", REDIS_URL="redis://d")
    settings = Settings()
    assert settings.database_url == "postgresql://dev@127.0.0.1:41234/db"
    assert settings.redis_url == "redis://d"


def test_dot_env_wins_over_dev_env_and_the_environment_over_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write(
        DEV_ENV_FILE,
        DATABASE_URL="postgresql://dev@127.0.0.1:1/db",
        REDIS_URL="redis://dev",
        LOG_LEVEL="DEBUG",
    )
    write(ENV_FILE, DATABASE_URL="postgresql://dotenv@127.0.0.1:2/db", REDIS_URL="redis://dotenv")
    monkeypatch.setenv("REDIS_URL", "redis://environment")
    settings = Settings()
    assert settings.redis_url == "redis://environment"
    assert settings.database_url == "postgresql://dotenv@127.0.0.1:2/db"
    assert settings.log_level == "DEBUG"  # only dev.env says it


def test_an_empty_variable_in_the_environment_still_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    write(DEV_ENV_FILE, DATABASE_URL="postgresql://dev@127.0.0.1:1/db")
    monkeypatch.setenv("DATABASE_URL", "")
    assert Settings().database_url == ""


def test_without_env_files_nothing_is_read_from_them() -> None:
    write(DEV_ENV_FILE, DATABASE_URL="postgresql://dev@127.0.0.1:1/db")
    write(ENV_FILE, REDIS_URL="redis://dotenv")
    settings = Settings(_env_file=None)
    assert (settings.database_url, settings.redis_url) == ("", "")
