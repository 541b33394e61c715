"""What an API key looks like, and how it is hashed and checked.

A key reads ``lak_<key_id>_<secret>``: the key id is public (it names the key
in `keys list` and logs), the secret is 32 random bytes. We store only the
SHA-256 of the whole key. A fast hash is right here: the secret has 256 bits
of entropy, so there is nothing for a slow hash to protect against.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

KEY_PREFIX = "lak"
_KEY_PATTERN = re.compile(r"^lak_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})$")


class Scope(StrEnum):
    INGEST = "ingest"
    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    plaintext: str
    key_hash: str


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as the service knows it: never the plaintext."""

    key_id: str
    product: str
    scopes: frozenset[Scope]
    key_hash: str
    rate_limit_per_second: float | None = None  # None: the deployment's default

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def generate_key() -> NewKey:
    key_id = secrets.token_hex(6)
    plaintext = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id=key_id, plaintext=plaintext, key_hash=hash_key(plaintext))


def key_id_of(token: str) -> str | None:
    """The key id a presented token claims, or None if it is not shaped like a key."""
    match = _KEY_PATTERN.fullmatch(token)
    return match.group(1) if match else None


def matches(token: str, key: ApiKey) -> bool:
    # Constant time: the comparison must not reveal how much of a guess was right.
    return hmac.compare_digest(hash_key(token), key.key_hash)
