"""The OpenAPI document says what the API really does."""

from __future__ import annotations

import re
from typing import Any

import httpx

from labs_analytics.api.app import create_app
from labs_analytics.settings import Settings


def openapi() -> dict[str, Any]:
    settings = Settings(
        _env_file=None, database_url="postgresql://u@localhost/db", redis_url="redis://localhost"
    )
    return create_app(settings).openapi()


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        refs = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return refs + [r for value in node.values() for r in all_refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in all_refs(item)]
    return []


def test_every_reference_resolves() -> None:
    schema = openapi()
    components = schema["components"]["schemas"]
    for ref in all_refs(schema):
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in components, ref


def test_ingest_documents_its_body_success_and_every_error() -> None:
    operation = openapi()["paths"]["/v1/events"]["post"]
    body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in body_schema["oneOf"]} == {
        "EventIn",
        "EventBatchIn",
    }
    assert set(operation["responses"]) == {
        *("202", "400", "401", "403", "413", "415", "422", "429", "500", "503")
    }
    assert operation["security"] == [{"HTTPBearer": []}]


def test_event_schema_carries_the_contracts_limits() -> None:
    event = openapi()["components"]["schemas"]["EventIn"]
    assert event["required"] == ["name"]
    assert event["additionalProperties"] is False
    assert set(event["properties"]) == {
        "event_id",
        "name",
        "user",
        "timestamp",
        "properties",
        "context",
        "product",
    }
    batch = openapi()["components"]["schemas"]["EventBatchIn"]
    assert batch["properties"]["events"]["minItems"] == 1


def test_rate_limits_and_outages_document_retry_after() -> None:
    responses = openapi()["paths"]["/v1/events"]["post"]["responses"]
    for status in ("429", "503"):
        header = responses[status]["headers"]["Retry-After"]
        assert header["schema"]["type"] == "integer", status


async def test_the_docs_pages_load_their_assets_from_the_service_not_a_cdn() -> None:
    settings = Settings(
        _env_file=None, database_url="postgresql://u@localhost/db", redis_url="redis://localhost"
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for page in ("/docs", "/redoc"):
            html = (await client.get(page)).text
            assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', html)
            assert assets, page
            for asset in assets:
                assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
                answer = await client.get(asset)
                assert answer.status_code == 200, asset
                assert len(answer.content) > 1000, asset
            assert "cdn." not in html, page
