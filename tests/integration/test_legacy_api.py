"""The Penn Labs legacy API: `POST /analytics/` with Platform JWTs, as django-labs-accounts sends.

Tokens are signed RS256 by keys of the test's own; their public halves are
served as a JSON Web Key Set by a real HTTP server in the test (which counts
the fetches), so the verifier's caching and rotation run for real.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from labs_analytics.ingest.legacy import LEGACY_NAMESPACE
from labs_analytics.settings import Settings
from tests.helpers import (
    ApiFactory,
    RunningApi,
    event_rows,
    in_a_thread,
    serve_process,
    wait_for,
    wait_for_drained_stream,
    wait_for_events,
)

CLUBS = "urn:pennlabs:penn-clubs"
MOBILE = "urn:pennlabs:penn-mobile"
SUBJECTS = {CLUBS: frozenset({"clubs"}), MOBILE: frozenset({"mobile_backend", "mobile_ios"})}


class SigningKey:
    def __init__(self) -> None:
        self.kid = uuid.uuid4().hex[:12]
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        public: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def token(
        self,
        subject: str = CLUBS,
        *,
        use: str = "access",
        expires_in: float = 600,
        claims: dict[str, Any] | None = None,
    ) -> str:
        """RS256-signed; ``claims`` added or, where None, removed."""
        payload: dict[str, Any] = {"sub": subject, "use": use, "exp": int(time.time() + expires_in)}
        for name, value in (claims or {}).items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        return jwt.encode(payload, self.private, algorithm="RS256", headers={"kid": self.kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims_segment() -> str:
    claims = {"sub": CLUBS, "use": "access", "exp": int(time.time() + 600)}
    return _b64(json.dumps(claims).encode())


def unsigned_token(key: SigningKey) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": key.kid}).encode())
    return f"{header}.{_claims_segment()}."


def hmac_token_keyed_with_the_public_key(key: SigningKey) -> str:
    """HS256 with the public key's PEM as the secret: a verifier that lets the
    token pick its algorithm would accept it."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    signing_input = f"{header}.{_claims_segment()}"
    secret = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


class JwksServer:
    """A real HTTP server of a key set; ``keys`` may change while it runs."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = keys
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps({"keys": [key.jwk() for key in outer.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/identity/jwks/"

    @contextlib.contextmanager
    def running(self) -> Iterator[JwksServer]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def signing_key() -> SigningKey:
    return SigningKey()


@pytest.fixture
def jwks(signing_key: SigningKey) -> Iterator[JwksServer]:
    with JwksServer([signing_key]).running() as server:
        yield server


def legacy_settings(jwks: JwksServer, **overrides: Any) -> dict[str, Any]:
    return {
        "platform_jwks_url": jwks.url,
        "platform_subjects": SUBJECTS,
        "platform_jwks_min_refetch_seconds": 0.5,
        **overrides,
    }


def body(product: int = 10, pennkey: str | None = "bfranklin", **fields: Any) -> dict[str, Any]:
    return {
        "product": product,
        "pennkey": pennkey,
        "timestamp": 1764547200.25,
        "data": [{"key": "club.view", "value": "penn-labs"}],
        **fields,
    }


async def post(
    app: RunningApi, token: str | None, payload: Any, path: str = "/analytics/"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await app.client.post(path, json=payload, headers=headers)


async def test_data_points_land_as_events_exactly_once(
    api: ApiFactory, jwks: JwksServer, signing_key: SigningKey, db: asyncpg.Connection
) -> None:
    data = [
        {"key": "club.view", "value": "penn-labs"},
        {"key": "club.view", "value": "penn-labs"},  # a second, separate view
        {"key": "Favorites Added", "value": 5},  # raw values are coerced to text
        {"key": "settings", "value": {"dark": True}},
    ]
    async with api(**legacy_settings(jwks)) as app:
        token = signing_key.token()
        response = await post(app, token, body(data=data))
        assert response.status_code == 200, response.text
        assert response.json() == {"message": "Data stored successfully!"}
        # The same request again (the client retried after a lost answer), on the
        # other path: the same four events.
        assert (await post(app, token, body(data=data), path="/analytics")).status_code == 200
        await wait_for_events(db, 4, product="clubs")
        await wait_for_drained_stream(app.settings)

    rows = await event_rows(db, "clubs")
    assert len(rows) == 4
    assert sorted((row["name"], row["properties"]["value"]) for row in rows) == [
        ("Favorites Added", "5"),
        ("club.view", "penn-labs"),
        ("club.view", "penn-labs"),
        ("settings", '{"dark":true}'),
    ]
    assert {row["user_id"] for row in rows} == {"bfranklin"}
    assert {row["timestamp"] for row in rows} == {datetime.fromtimestamp(1764547200.25, tz=UTC)}
    assert rows[0]["context"] == {"$legacy": {"product": 10, "subject": CLUBS}}
    moment = "2025-12-01T00:00:00.250000+00:00"
    expected = uuid.uuid5(
        LEGACY_NAMESPACE,
        "\n".join((CLUBS, "clubs", "bfranklin", moment, "Favorites Added", "5", "0")),
    )
    assert expected in {row["event_id"] for row in rows}


async def test_tokens_and_bodies_that_are_refused(
    api: ApiFactory, jwks: JwksServer, signing_key: SigningKey
) -> None:
    foreign = SigningKey()
    foreign.kid = signing_key.kid  # the right key id, the wrong key
    async with api(**legacy_settings(jwks)) as app:
        good = signing_key.token()
        cases: list[tuple[str | None, Any, int, str]] = [
            (None, body(), 401, "unauthenticated"),
            ("not.a.jwt", body(), 401, "unauthenticated"),
            (signing_key.token(expires_in=-120), body(), 401, "unauthenticated"),
            (signing_key.token(use="refresh"), body(), 401, "unauthenticated"),
            (foreign.token(), body(), 401, "unauthenticated"),
            (signing_key.token("urn:pennlabs:someone-else"), body(), 403, "forbidden"),
            # Hostile tokens: unsigned, HMAC-signed with the public key (the
            # classic key confusion), no expiry, and one too big to parse.
            (unsigned_token(signing_key), body(), 401, "unauthenticated"),
            (hmac_token_keyed_with_the_public_key(signing_key), body(), 401, "unauthenticated"),
            (signing_key.token(claims={"exp": None}), body(), 401, "unauthenticated"),
            (signing_key.token(claims={"pad": "x" * 9000}), body(), 401, "unauthenticated"),
            (signing_key.token(MOBILE), body(product=10), 403, "forbidden"),
            (good, body(product=11), 422, "invalid_events"),
            (good, body(product=True), 422, "invalid_events"),
            (good, body(data=[]), 422, "invalid_events"),
            (good, body(timestamp="yesterday"), 422, "invalid_events"),
            (good, {"product": 10}, 422, "invalid_events"),
        ]
        for token, payload, status, code in cases:
            response = await post(app, token, payload)
            assert response.status_code == status, (code, response.text)
            assert response.json()["error"] == code
            assert response.json()["detail"]
        malformed = await app.client.post(
            "/analytics/", content=b"{", headers={"Authorization": f"Bearer {good}"}
        )
        assert malformed.status_code == 400
        # A mobile token writes the mobile products.
        assert (await post(app, signing_key.token(MOBILE), body(product=3))).status_code == 200


async def test_a_rotated_key_is_fetched_once_and_then_accepted(
    api: ApiFactory, jwks: JwksServer, signing_key: SigningKey
) -> None:
    async with api(**legacy_settings(jwks)) as app:
        assert (await post(app, signing_key.token(), body())).status_code == 200
        fetches = jwks.fetches
        rotated = SigningKey()
        jwks.keys = [rotated]
        token = rotated.token()
        # Many requests at once with the new key id: one fetch, answered 503 meanwhile.
        answers = await asyncio.gather(*(post(app, token, body()) for _ in range(10)))
        assert {answer.status_code for answer in answers} <= {200, 503}
        for answer in answers:
            if answer.status_code == 503:
                assert int(answer.headers["Retry-After"]) >= 1

        async def accepted() -> bool:
            return (await post(app, token, body())).status_code == 200

        await wait_for(accepted, what="the rotated key accepted")
        assert jwks.fetches == fetches + 1
        # A made-up key id: refused once a fetch made after it was seen lacks it.
        made_up = SigningKey()
        statuses = []
        for _ in range(40):
            statuses.append((await post(app, made_up.token(), body())).status_code)
            if statuses[-1] == 401:
                break
            await asyncio.sleep(0.1)
        assert statuses[-1] == 401
        assert set(statuses) <= {503, 401}
        assert jwks.fetches <= fetches + 3


async def test_tokens_are_verified_once_and_cached(
    api: ApiFactory, jwks: JwksServer, signing_key: SigningKey
) -> None:
    async with api(**legacy_settings(jwks)) as app:
        token = signing_key.token()
        for _ in range(3):
            assert (await post(app, token, body())).status_code == 200
        platform = app.app.state.labs.platform
        assert token in platform._tokens
        assert jwks.fetches == 1


async def test_without_a_key_set_configured_every_token_is_refused(api: ApiFactory) -> None:
    async with api() as app:
        response = await post(app, SigningKey().token(), body())
        assert response.status_code == 401
        assert "PLATFORM_JWKS_URL" in response.json()["detail"]


async def test_a_django_labs_accounts_style_client_against_serve(
    settings: Settings,
    jwks: JwksServer,
    signing_key: SigningKey,
    db: asyncpg.Connection,
    tmp_path: Any,
) -> None:
    """What the DLA client does: requests.post with its cached access token, no redirects."""
    env = {
        "PLATFORM_JWKS_URL": jwks.url,
        "PLATFORM_SUBJECTS": f"{CLUBS}=clubs;{MOBILE}=mobile_backend,mobile_ios",
    }
    async with in_a_thread(serve_process(settings, tmp_path, **env)) as server:
        token = signing_key.token()

        def send() -> list[int]:
            statuses = []
            with httpx.Client(base_url=server.base_url, follow_redirects=False) as client:
                for n in range(5):
                    payload = body(
                        timestamp=1764547200 + n,
                        data=[{"key": "dining.view", "value": f"hall-{n}"}],
                    )
                    response = client.post(
                        "/analytics/", json=payload, headers={"Authorization": f"Bearer {token}"}
                    )
                    statuses.append(response.status_code)
            return statuses

        assert await asyncio.to_thread(send) == [200] * 5
        await wait_for_events(db, 5, product="clubs")


async def test_the_fast_path_and_the_framework_answer_alike(
    api: ApiFactory, jwks: JwksServer, signing_key: SigningKey
) -> None:
    token = signing_key.token()
    answers = []
    for fast_path in (True, False):
        async with api(fast_path=fast_path, **legacy_settings(jwks)) as app:
            got = []
            for path in ("/analytics", "/analytics/"):
                for payload, auth in ((body(), token), (body(product=12), token), (body(), None)):
                    response = await post(app, auth, payload, path=path)
                    got.append((response.status_code, response.json()))
            answers.append(got)
    assert answers[0] == answers[1]
    assert [status for status, _ in answers[0]] == [200, 422, 401] * 2
