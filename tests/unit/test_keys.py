"""API keys: their shape, their hash, and what each scope allows."""

from __future__ import annotations

import hashlib
import re

import pytest

from labs_analytics.auth.keys import ApiKey, Scope, generate_key, hash_key, key_id_of, matches

KEY_SHAPE = re.compile(r"lak_[0-9a-f]{12}_[A-Za-z0-9_\-]{43}")
VALID_ID = "0123456789ab"
VALID_SECRET = "A" * 43


def api_key(*scopes: Scope, key_hash: str = "x") -> ApiKey:
    return ApiKey(key_id=VALID_ID, product="clubs", scopes=frozenset(scopes), key_hash=key_hash)


# --- generate_key -------------------------------------------------------------


def test_generated_key_reads_lak_then_12_hex_id_then_43_char_secret() -> None:
    new_key = generate_key()
    assert KEY_SHAPE.fullmatch(new_key.plaintext), new_key.plaintext
    assert new_key.plaintext.startswith(f"lak_{new_key.key_id}_")


def test_generated_key_stores_the_sha256_of_the_whole_key() -> None:
    new_key = generate_key()
    assert new_key.key_hash == hashlib.sha256(new_key.plaintext.encode()).hexdigest()


def test_generated_keys_have_distinct_ids_and_secrets() -> None:
    keys = [generate_key() for _ in range(200)]
    assert len({k.key_id for k in keys}) == len(keys)
    assert len({k.plaintext.split("_", 2)[2] for k in keys}) == len(keys)
    assert len({k.key_hash for k in keys}) == len(keys)


# --- key_id_of ----------------------------------------------------------------


def test_key_id_of_a_generated_key_is_its_id() -> None:
    new_key = generate_key()
    assert key_id_of(new_key.plaintext) == new_key.key_id


def test_key_id_of_a_secret_containing_underscores_and_dashes() -> None:
    assert key_id_of(f"lak_{VALID_ID}_{'_-' * 21}a") == VALID_ID


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("lak_", id="prefix-only"),
        pytest.param(f"lk_{VALID_ID}_{VALID_SECRET}", id="wrong-prefix"),
        pytest.param(f"LAK_{VALID_ID}_{VALID_SECRET}", id="uppercase-prefix"),
        pytest.param(f"lak_{VALID_ID.upper()}_{VALID_SECRET}", id="uppercase-hex-id"),
        pytest.param(f"lak_{VALID_ID[:-1]}_{VALID_SECRET}", id="11-char-id"),
        pytest.param(f"lak_{VALID_ID}0_{VALID_SECRET}", id="13-char-id"),
        pytest.param(f"lak_0123456789ag_{VALID_SECRET}", id="non-hex-id"),
        pytest.param(f"lak_{VALID_ID}_{VALID_SECRET[:-1]}", id="42-char-secret"),
        pytest.param(f"lak_{VALID_ID}_{VALID_SECRET}A", id="44-char-secret"),
        pytest.param(f"lak_{VALID_ID}_{'A' * 42}=", id="padded-base64-secret"),
        pytest.param(f"lak_{VALID_ID}_{'A' * 42}+", id="plus-in-secret"),
        pytest.param(f"lak_{VALID_ID}{VALID_SECRET}", id="missing-separator"),
        pytest.param(f"Bearer lak_{VALID_ID}_{VALID_SECRET}", id="with-bearer"),
        pytest.param(f" lak_{VALID_ID}_{VALID_SECRET}", id="leading-space"),
        pytest.param(f"lak_{VALID_ID}_{VALID_SECRET} ", id="trailing-space"),
        pytest.param(f"lak_{VALID_ID}_{VALID_SECRET}\n", id="trailing-newline"),
    ],
)
def test_key_id_of_a_token_not_shaped_like_a_key_is_none(token: str) -> None:
    assert key_id_of(token) is None


# --- hash_key and matches -----------------------------------------------------


def test_hash_key_is_the_sha256_hex_digest() -> None:
    assert hash_key("lak_x") == hashlib.sha256(b"lak_x").hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", hash_key("anything"))


def test_hash_key_never_equals_the_plaintext() -> None:
    new_key = generate_key()
    assert hash_key(new_key.plaintext) != new_key.plaintext
    assert new_key.plaintext not in hash_key(new_key.plaintext)


def test_hash_key_is_deterministic_and_distinguishes_keys() -> None:
    assert hash_key("a") == hash_key("a")
    assert hash_key("a") != hash_key("b")


def test_a_key_matches_its_own_hash() -> None:
    new_key = generate_key()
    assert matches(new_key.plaintext, api_key(Scope.INGEST, key_hash=new_key.key_hash))


def test_a_key_does_not_match_another_keys_hash() -> None:
    mine, theirs = generate_key(), generate_key()
    assert not matches(mine.plaintext, api_key(Scope.INGEST, key_hash=theirs.key_hash))


def test_presenting_the_stored_hash_does_not_authenticate() -> None:
    new_key = generate_key()
    assert not matches(new_key.key_hash, api_key(Scope.INGEST, key_hash=new_key.key_hash))


def test_a_key_with_one_character_changed_does_not_match() -> None:
    new_key = generate_key()
    last = new_key.plaintext[-1]
    altered = new_key.plaintext[:-1] + ("B" if last != "B" else "C")
    assert not matches(altered, api_key(Scope.INGEST, key_hash=new_key.key_hash))


# --- ApiKey.allows ------------------------------------------------------------


def test_key_allows_the_scopes_it_has() -> None:
    key = api_key(Scope.INGEST)
    assert key.allows(Scope.INGEST)
    assert not key.allows(Scope.READ)
    assert not key.allows(Scope.ADMIN)


def test_key_with_several_scopes_allows_each_of_them() -> None:
    key = api_key(Scope.INGEST, Scope.READ)
    assert key.allows(Scope.INGEST)
    assert key.allows(Scope.READ)
    assert not key.allows(Scope.ADMIN)


@pytest.mark.parametrize("scope", list(Scope))
def test_admin_scope_implies_every_scope(scope: Scope) -> None:
    assert api_key(Scope.ADMIN).allows(scope)


def test_key_without_scopes_allows_nothing() -> None:
    assert not any(api_key().allows(scope) for scope in Scope)


def test_scopes_are_their_lowercase_names() -> None:
    assert [str(s) for s in Scope] == ["ingest", "read", "admin"]
