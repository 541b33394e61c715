"""Settings: database URL forms, list-valued env vars, and derived Redis names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from labs_analytics.settings import Settings, to_asyncpg_dsn, to_sqlalchemy_url


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's or CI's environment must not leak into these tests."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)


URL_FORMS = [
    "postgresql://alice:s3cret@db.example.org:5433/analytics",
    "postgres://alice:s3cret@db.example.org:5433/analytics",
    "postgresql+asyncpg://alice:s3cret@db.example.org:5433/analytics",
    "postgresql+psycopg://alice:s3cret@db.example.org:5433/analytics",
]


@pytest.mark.parametrize("url", URL_FORMS)
def test_asyncpg_dsn_is_a_plain_postgresql_url_with_everything_kept(url: str) -> None:
    assert to_asyncpg_dsn(url) == "postgresql://alice:s3cret@db.example.org:5433/analytics"


@pytest.mark.parametrize("url", URL_FORMS)
def test_sqlalchemy_url_uses_asyncpg_and_keeps_every_part(url: str) -> None:
    result = to_sqlalchemy_url(url)
    assert result.drivername == "postgresql+asyncpg"
    assert result.username == "alice"
    assert result.password == "s3cret"
    assert result.host == "db.example.org"
    assert result.port == 5433
    assert result.database == "analytics"


def test_password_with_url_special_characters_survives_both_forms() -> None:
    url = "postgresql://alice:p%40ss%2Fw%3Ard@localhost:5432/db"
    assert to_sqlalchemy_url(url).password == "p@ss/w:rd"
    dsn = to_asyncpg_dsn(url)
    assert to_sqlalchemy_url(dsn).password == "p@ss/w:rd"


def test_url_without_password_or_port_stays_without_them() -> None:
    assert to_asyncpg_dsn("postgres://alice@localhost/db") == "postgresql://alice@localhost/db"


def test_empty_database_url_cannot_be_converted() -> None:
    with pytest.raises(ValueError, match="DATABASE_URL is not set"):
        to_sqlalchemy_url("")
    with pytest.raises(ValueError, match="DATABASE_URL is not set"):
        to_asyncpg_dsn("")


def test_settings_expose_both_database_url_forms() -> None:
    settings = Settings(_env_file=None, database_url="postgres://u:p@h:5433/d")
    assert settings.asyncpg_dsn == "postgresql://u:p@h:5433/d"
    assert settings.sqlalchemy_url.drivername == "postgresql+asyncpg"


def test_empty_database_url_is_allowed_for_embedded_dev_servers() -> None:
    assert Settings(_env_file=None).database_url == ""


@pytest.mark.parametrize(
    "url", ["mysql://u:p@localhost/db", "sqlite:///events.db", "redis://localhost:6379/0"]
)
def test_non_postgres_database_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="DATABASE_URL must be a postgresql:// URL"):
        Settings(_env_file=None, database_url=url)


def test_unparseable_database_url_is_a_settings_validation_error() -> None:
    # Operators must see which setting is wrong, not a bare SQLAlchemy exception.
    with pytest.raises(ValidationError, match="database_url"):
        Settings(_env_file=None, database_url="not a url")


def test_database_url_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/d")
    assert Settings(_env_file=None).database_url == "postgresql://u@h/d"


def test_non_postgres_database_url_in_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://u@h/d")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_cors_origins_env_var_is_split_on_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "a, b")
    assert Settings(_env_file=None).cors_origins == ["a", "b"]


def test_cors_origins_env_var_drops_blank_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", " https://a.org ,, https://b.org:8443 , ")
    assert Settings(_env_file=None).cors_origins == ["https://a.org", "https://b.org:8443"]


def test_single_cors_origin_env_var_is_a_one_item_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://pennlabs.org")
    assert Settings(_env_file=None).cors_origins == ["https://pennlabs.org"]


def test_empty_cors_origins_env_var_is_no_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "")
    assert Settings(_env_file=None).cors_origins == []


def test_cors_origins_default_to_none() -> None:
    assert Settings(_env_file=None).cors_origins == []


def test_cors_origins_may_be_given_as_a_list() -> None:
    assert Settings(_env_file=None, cors_origins=["a", "b"]).cors_origins == ["a", "b"]


def test_stream_key_is_under_the_redis_key_prefix() -> None:
    assert Settings(_env_file=None, redis_key_prefix="test-1234:").stream_key == "test-1234:events"


def test_default_stream_key() -> None:
    assert Settings(_env_file=None).stream_key == "la:events"


def test_integer_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_EVENTS_PER_REQUEST", "250")
    assert Settings(_env_file=None).max_events_per_request == 250


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_body_bytes", 0),
        ("max_events_per_request", 10_001),
        ("max_future_skew_seconds", -1),
        ("retry_after_seconds", 0),
    ],
)
def test_out_of_range_limits_are_refused(field: str, value: int) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(_env_file=None, **{field: value})
