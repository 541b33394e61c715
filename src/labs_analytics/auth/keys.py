"""What an API key looks like, and how it is hashed and checked.

A key reads ``lak_<key_id>_<secret>``: the key id is public (it names the key
in `keys list` and logs), the secret is 32 random bytes. We store only the
SHA-256 of the whole key. A fast hash is right here: the secret has 256 bits
of entropy, so there is nothing for a slow hash to protect against.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

from labs_analytics_client.contract import PRODUCT_PATTERN

KEY_PREFIX = "lak"
# Used with fullmatch only: a `$` would also match before a trailing newline.
_KEY_PATTERN = re.compile(r"lak_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})")
_PRODUCT = re.compile(PRODUCT_PATTERN)

# A key's own rate, in events per second. The Redis token bucket computes its
# expiry and Retry-After from the rate: below the minimum they overflow what
# Redis accepts (1e-300 made the script fail for every key in the same call),
# above the maximum the limit means nothing. The database enforces the same
# range (ck_api_keys_rate_limit_per_second_valid).
MIN_RATE_LIMIT_PER_SECOND = 0.001
MAX_RATE_LIMIT_PER_SECOND = 1_000_000.0
MAX_LABEL_LENGTH = 200
# Characters that would let a label forge or rewrite lines of `keys list`:
# controls (newline, carriage return, escape sequences), the Unicode line and
# paragraph separators, and the bidirectional overrides that reorder the text
# shown after them.
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


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


class InvalidKeyField(ValueError):
    """A product, label or rate limit a key may not have; the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_product(product: str) -> str:
    if not _PRODUCT.fullmatch(product):
        raise InvalidKeyField(
            "product",
            "lowercase letters, digits, _ and -, starting with a letter or digit, at most 64",
        )
    return product


def _is_line_breaking(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS


def check_label(label: str) -> str:
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidKeyField("label", f"at most {MAX_LABEL_LENGTH} characters")
    bad = next((char for char in label if _is_line_breaking(char)), None)
    if bad is not None:
        raise InvalidKeyField(
            "label",
            f"must not contain control characters or line separators (found U+{ord(bad):04X})",
        )
    return label


def is_valid_rate_limit(rate: object) -> bool:
    """A rate the token bucket can use: a finite number in the allowed range."""
    return (
        isinstance(rate, int | float)
        and not isinstance(rate, bool)
        and math.isfinite(rate)
        and MIN_RATE_LIMIT_PER_SECOND <= rate <= MAX_RATE_LIMIT_PER_SECOND
    )


def check_rate_limit(rate: float | None) -> float | None:
    """A key's own rate, or None for the deployment's default."""
    if rate is not None and not is_valid_rate_limit(rate):
        raise InvalidKeyField(
            "rate_limit_per_second",
            f"events per second must be a finite number from {MIN_RATE_LIMIT_PER_SECOND:g} "
            f"to {MAX_RATE_LIMIT_PER_SECOND:,.0f} (got {rate!r})",
        )
    return rate


def check_default_rate_limit(rate: float) -> float:
    """The deployment's default rate: 0 (no limit) or a rate a key could have."""
    if rate != 0 and not is_valid_rate_limit(rate):
        raise ValueError(
            f"must be 0 (no limit) or from {MIN_RATE_LIMIT_PER_SECOND:g} "
            f"to {MAX_RATE_LIMIT_PER_SECOND:,.0f} events per second"
        )
    return rate


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
