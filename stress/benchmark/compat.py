"""What the compatibility routes' measurements need: a Platform key set and token, and bodies.

(f) the Penn Labs legacy route: 10 `{key, value}` data points per request and
one cached Platform JWT, signed by a key the run makes and serves as a JSON
Web Key Set from this process. (g) a Segment batch of 100 `track` messages.
The same body is sent again and again (the load generator's way), so after
the first request the flushers store nothing new: what is measured is the API.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

SUBJECT = "urn:pennlabs:bench"
LEGACY_PRODUCT = 10  # clubs
LEGACY_POINTS = 10
SEGMENT_MESSAGES = 100

LEGACY_BODY = json.dumps(
    {
        "product": LEGACY_PRODUCT,
        "pennkey": "bfranklin",
        "timestamp": 1764547200,
        "data": [{"key": f"club.view.{n}", "value": f"club-{n}"} for n in range(LEGACY_POINTS)],
    }
).encode()
SEGMENT_BODY = json.dumps(
    {
        "batch": [
            {
                "type": "track",
                "event": "Club Viewed",
                "userId": "u_1842",
                "properties": {"club": "penn-labs", "n": n},
                "timestamp": "2026-11-30T15:04:05Z",
                "messageId": str(uuid.UUID(int=n + 1)),
            }
            for n in range(SEGMENT_MESSAGES)
        ]
    }
).encode()


class Platform:
    """A signing key, its key set served over HTTP, and a token for ``SUBJECT``."""

    def __init__(self) -> None:
        self.kid = uuid.uuid4().hex[:12]
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        self.key_set = json.dumps({"keys": [{**public, "kid": self.kid, "alg": "RS256"}]}).encode()

    def token(self, seconds: float = 3600) -> str:
        claims = {"sub": SUBJECT, "use": "access", "exp": int(time.time() + seconds)}
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid})

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        """The key set's URL, served for the body of the block."""
        body = self.key_set

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/identity/jwks/"
        finally:
            server.shutdown()
            server.server_close()


def platform_env(jwks_url: str) -> dict[str, str]:
    return {"PLATFORM_JWKS_URL": jwks_url, "PLATFORM_SUBJECTS": f"{SUBJECT}=clubs"}
