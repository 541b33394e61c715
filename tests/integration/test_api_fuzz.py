"""The HTTP API answers every request as its OpenAPI document says.

Schemathesis generates requests from the document a real `labs-analytics
serve` publishes at /openapi.json (Redis and PostgreSQL real too), and every
answer must be documented: no 5xx, a documented status code and content type,
a body matching the documented model. Without a key, or with a wrong one, the
answer is always 401 in the one error shape. Most generated events are
refused (random names, far-future times); valid events from the contract's
own strategy must be accepted with 202.

Bounded and repeatable: a fixed number of derandomized examples per operation.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, note, settings
from redis.asyncio import Redis
from schemathesis import APIOperation, BaseSchema, Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Err

from labs_analytics.auth.keys import Scope
from labs_analytics.settings import Settings, to_asyncpg_dsn
from tests.helpers import (
    ServeProcess,
    Servers,
    create_key,
    fast_settings,
    serve_process,
    wait_for,
)
from tests.unit.test_event_properties import valid_bodies

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Authorization headers that must all be refused, built from the valid key.
WRONG_AUTHORIZATIONS: dict[str, Callable[[str], str]] = {
    "no credentials": lambda key: "Bearer",
    "another scheme": lambda key: f"Basic {key}",
    "key without a scheme": lambda key: key,
    "never issued": lambda key: f"Bearer lak_{'0' * 12}_{'A' * 43}",
    "issued id, wrong secret": lambda key: f"Bearer {key[:-1]}{'B' if key[-1] == 'A' else 'A'}",
    "truncated": lambda key: f"Bearer {key[:-1]}",
    "not shaped like a key": lambda key: "Bearer not-a-key",
}
INGEST = ("POST", "/v1/events")


def fuzz(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,  # the same requests on every run: CI is repeatable
        database=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )


@dataclass
class Service:
    server: ServeProcess
    database_url: str
    key: str
    schema: BaseSchema
    client: httpx.Client
    dead_letters_before: int

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def send(self, case: Case, headers: dict[str, str]) -> httpx.Response:
        """Send a generated case over HTTP, with exactly the auth headers given."""
        kwargs = case.as_transport_kwargs(base_url=self.base_url, headers=headers)
        assert not kwargs.get("cookies"), "the API has no cookie parameters"
        request_headers = {
            k: v for k, v in kwargs["headers"].items() if k.lower() != "authorization"
        }
        request_headers.update(headers)
        if "json" in kwargs:
            # The stdlib, not orjson: generated integers may exceed 64 bits.
            content: bytes | None = json.dumps(kwargs["json"]).encode()
        else:
            content = kwargs.get("data")
        note(f"{kwargs['method']} {kwargs['url']} {content[:500] if content else b''!r}")
        return self.client.request(
            kwargs["method"],
            kwargs["url"],
            params=kwargs.get("params") or None,
            headers=request_headers,
            content=content,
        )

    def operations(self) -> list[APIOperation]:
        operations = []
        for result in self.schema.get_all_operations():
            if isinstance(result, Err):
                raise result.err()  # the document itself is invalid
            operations.append(result.ok())
        return operations

    def ingest(self) -> APIOperation:
        method, path = INGEST
        return self.schema[path][method]

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module")
def service(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One real `serve` for the whole module: starting one per test would cost seconds each."""
    settings_ = fast_settings(
        servers, prefix="fuzz", spool_dir=tmp_path_factory.mktemp("fuzz-spool")
    )
    # Both scopes: the read API is fuzzed as well as ingest.
    key = asyncio.run(create_key(settings_, product="clubs", scopes=(Scope.INGEST, Scope.READ)))
    dead_letters_before = asyncio.run(count_dead_letters(servers.database_url))
    log_dir = tmp_path_factory.mktemp("fuzz")
    try:
        with (
            # A live stream ends after a fifth of a second, so each case is answered.
            serve_process(
                settings_,
                log_dir,
                SPOOL_DIR=str(log_dir / "spool"),
                LIVE_STREAM_MAX_SECONDS="0.2",
                LIVE_POLL_SECONDS="0.05",
            ) as server,
            httpx.Client(timeout=10) as client,
        ):
            schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
            yield Service(
                server=server,
                database_url=servers.database_url,
                key=key,
                schema=schema,
                client=client,
                dead_letters_before=dead_letters_before,
            )
    finally:
        asyncio.run(_delete_keys(settings_))


async def count_dead_letters(database_url: str) -> int:
    conn = await asyncpg.connect(to_asyncpg_dsn(database_url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM dead_letters"))
    finally:
        await conn.close()


async def wait_until_stored(database_url: str, ids: set[uuid.UUID]) -> None:
    conn = await asyncpg.connect(to_asyncpg_dsn(database_url))
    try:

        async def all_stored() -> bool:
            rows = await conn.fetch(
                "SELECT DISTINCT event_id FROM events WHERE event_id = ANY($1::uuid[])", list(ids)
            )
            return len(rows) == len(ids)

        await wait_for(all_stored, timeout=10, what=f"{len(ids)} accepted events in PostgreSQL")
    finally:
        await conn.close()


async def _delete_keys(settings_: Settings) -> None:
    client = Redis.from_url(settings_.redis_url)
    try:
        async for name in client.scan_iter(match=f"{settings_.redis_key_prefix}*"):
            await client.delete(name)
    finally:
        await client.aclose()


def run_cases(
    operation: APIOperation,
    mode: GenerationMode,
    max_examples: int,
    check: Callable[[Case], None],
    headers: dict[str, str] | None = None,
) -> None:
    """Run ``check`` on generated cases; fixed ``headers`` leave the body to be negated."""

    @fuzz(max_examples)
    @given(case=operation.as_strategy(generation_mode=mode, headers=headers))
    def run(case: Case) -> None:
        check(case)

    run()


def assert_error_shape(response: httpx.Response, code: str) -> None:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "message", "details"}
    assert body["error"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["details"], list)


# --- every operation, as documented ---------------------------------------------


def test_the_schema_lists_the_ingest_and_health_operations(service: Service) -> None:
    labels = {op.label for op in service.operations()}
    assert {"POST /v1/events", "GET /healthz", "GET /readyz"} <= labels


def test_every_operation_answers_as_documented_with_a_valid_key(service: Service) -> None:
    statuses: dict[str, set[int]] = {}

    def conforms(case: Case) -> None:
        response = service.send(case, service.bearer())
        statuses.setdefault(case.operation.label, set()).add(response.status_code)
        assert response.status_code < 500, response.text
        case.validate_response(response, checks=CHECKS)

    for operation in service.operations():
        # A live stream takes its whole (shortened) life to answer: fewer cases.
        examples = 20 if operation.label == "GET /v1/live" else 150
        run_cases(operation, GenerationMode.POSITIVE, examples, conforms)

    assert statuses["GET /healthz"] == {200}
    assert statuses["GET /readyz"] == {200}
    # Schema-valid events still meet the rules a schema cannot say (future
    # times, another product), but some must get through.
    assert 202 in statuses["POST /v1/events"]
    assert statuses["POST /v1/events"] <= {202, 403, 413, 422}
    # Schema-valid queries are often still wrong (an unknown metric is a string
    # to the schema): a 422 naming the field, and no 5xx; some are answered.
    # The analyses likewise (a filter or a window is a string to the schema).
    # Any of them may name another product in `product`, which this key may not
    # read: 403 (rare, as few generated strings are product names).
    for analysis in ("POST /v1/query", "POST /v1/funnels", "POST /v1/retention"):
        assert 200 in statuses[analysis], statuses[analysis]
        assert statuses[analysis] <= {200, 403, 422, 429}, statuses[analysis]


def test_ingest_refuses_bodies_that_violate_the_schema(service: Service) -> None:
    # Whatever the document says a client must not send is refused with a
    # documented 4xx: a body it calls invalid must not be stored.
    statuses: set[int] = set()

    def refused(case: Case) -> None:
        assert case.meta is not None
        assert case.meta.is_negative_at(ParameterLocation.BODY)
        response = service.send(case, service.bearer())
        statuses.add(response.status_code)
        assert response.status_code < 500, response.text
        case.validate_response(response, checks=CHECKS)
        assert 400 <= response.status_code < 500, (
            f"the schema calls this body invalid, yet it was accepted: {response.text}"
        )

    run_cases(service.ingest(), GenerationMode.NEGATIVE, 150, refused, headers=service.bearer())
    assert statuses <= {400, 403, 413, 415, 422}


# --- authentication ---------------------------------------------------------------


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_ingest_without_a_key_is_unauthenticated_whatever_the_body(
    service: Service, mode: GenerationMode
) -> None:
    def unauthenticated(case: Case) -> None:
        response = service.send(case, {})
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
        assert_error_shape(response, "unauthenticated")
        case.validate_response(response, checks=CHECKS)

    run_cases(service.ingest(), mode, 50, unauthenticated)


@pytest.mark.parametrize("wrong", sorted(WRONG_AUTHORIZATIONS))
def test_ingest_with_a_wrong_key_is_unauthenticated_whatever_the_body(
    service: Service, wrong: str
) -> None:
    authorization = WRONG_AUTHORIZATIONS[wrong](service.key)

    def unauthenticated(case: Case) -> None:
        response = service.send(case, {"Authorization": authorization})
        assert response.status_code == 401, response.text
        assert_error_shape(response, "unauthenticated")
        case.validate_response(response, checks=CHECKS)

    run_cases(service.ingest(), GenerationMode.POSITIVE, 10, unauthenticated)


# --- valid events ---------------------------------------------------------------------


def test_valid_events_are_accepted_with_their_ids(service: Service) -> None:
    operation = service.ingest()

    accepted_ids: set[uuid.UUID] = set()

    @fuzz(100)
    @given(body=valid_bodies())
    def accepted(body: dict[str, Any]) -> None:
        case = operation.Case(body=body, media_type="application/json")
        response = service.send(case, service.bearer())
        assert response.status_code == 202, response.text
        case.validate_response(response, checks=CHECKS)
        sent = body["events"] if "events" in body else [body]
        reply = response.json()
        assert reply["accepted"] == len(sent)
        for event, event_id in zip(sent, reply["ids"], strict=True):
            if "event_id" in event:
                assert uuid.UUID(event_id) == uuid.UUID(event["event_id"])
        accepted_ids.update(uuid.UUID(event_id) for event_id in reply["ids"])

    accepted()

    # Accepted means storable: odd times (year 1), unicode and 64-bit numbers
    # all reach PostgreSQL, and nothing of this module was dead-lettered.
    try:
        asyncio.run(wait_until_stored(service.database_url, accepted_ids))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nserve log:\n{service.server.logs()[-5000:]}") from exc
    assert asyncio.run(count_dead_letters(service.database_url)) == service.dead_letters_before
