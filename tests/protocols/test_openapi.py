"""The protocol routes in the OpenAPI document: listed with their security and permission,
the document valid OpenAPI 3.1, and what the routes really answer valid against it."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from roost.auth.permissions import PROTOCOL_ROUTES, ROUTES
from roost.testing.live import LiveServer

pytestmark = pytest.mark.timeout(30)


def body_schema(document: dict[str, Any], method: str, path: str,
                media_type: str = "application/json") -> Draft202012Validator:
    """A validator for the documented 200 body of an operation."""
    response = document["paths"][path][method]["responses"]["200"]
    schema = response["content"][media_type]["schema"]
    return Draft202012Validator({**schema, "components": document["components"]})


def test_every_protocol_route_is_documented_with_its_security(server: LiveServer) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    validate(document)  # raises on an invalid OpenAPI document
    schemes = document["components"]["securitySchemes"]
    assert {"bearer", "apiKey"} <= set(schemes)
    for method, path in sorted(PROTOCOL_ROUTES):
        operation = document["paths"][path][method.lower()]
        if ROUTES[(method, path)] == "public":
            assert operation["security"] == [], path
        else:
            assert operation["security"] == [{"bearer": []}, {"apiKey": []}], path
            assert f"Permission `{ROUTES[(method, path)]}`" in operation["description"], path
        assert "200" in operation["responses"], path


def test_what_the_routes_answer_keeps_to_the_document(server: LiveServer) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
        models = client.models.with_raw_response.list()
        body_schema(document, "get", "/v1/models").validate(models.http_response.json())
        chat = client.chat.completions.with_raw_response.create(
            model="weather", messages=[{"role": "user", "content": "Oslo?"}])
        body_schema(document, "post", "/v1/chat/completions").validate(
            chat.http_response.json())
        response = client.responses.with_raw_response.create(model="echo", input="hi")
        body_schema(document, "post", "/v1/responses").validate(
            response.http_response.json())
        missing = httpx.post(f"{server.url}/v1/chat/completions", json={
            "model": "nope", "messages": [{"role": "user", "content": "x"}]})
        assert missing.status_code == 404
        error = document["paths"]["/v1/chat/completions"]["post"]["responses"]["4XX"]
        Draft202012Validator({**error["content"]["application/json"]["schema"],
                              "components": document["components"]}).validate(missing.json())
    card = httpx.get(f"{server.url}/a2a/weather/.well-known/agent-card.json").json()
    body_schema(document, "get", "/a2a/{agent}/.well-known/agent-card.json").validate(card)
