"""The API's conventions: readable operationIds, every error documented as problem+json, the
declared schemas kept, 415 for a body that is not JSON, docs pages that load offline."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.server.conftest import assert_problem, new_session


def openapi(client: httpx.Client) -> dict[str, Any]:
    schema: dict[str, Any] = client.get("/openapi.json").json()
    return schema


def operations(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {op["operationId"]: op for path in schema["paths"].values()
            for method, op in path.items() if method in ("get", "post", "patch", "put", "delete")}


def test_operation_ids_are_readable(client: httpx.Client) -> None:
    ops = operations(openapi(client))
    assert {"createTurn", "createSession", "listSessions", "getRun", "listEvents"} <= set(ops)
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z0-9]*)*", op_id) for op_id in ops), sorted(ops)


def test_every_operation_documents_its_errors_as_problem_json(client: httpx.Client) -> None:
    schema = openapi(client)
    assert set(schema["components"]["schemas"]["Problem"]["required"]) >= {
        "type", "title", "status", "detail"}
    for op_id, op in operations(schema).items():
        if {"openai", "mcp", "a2a"} & set(op.get("tags", [])):
            continue  # the protocols' own error shapes (tests/protocols/test_openapi.py)
        for code in ("4XX", "5XX"):
            content = op["responses"][code]["content"]
            assert content == {"application/problem+json": {
                "schema": {"$ref": "#/components/schemas/Problem"}}}, (op_id, code)
        assert "422" not in op["responses"], op_id  # FastAPI's HTTPValidationError is not ours


def test_the_event_page_matches_its_declared_schema(client: httpx.Client) -> None:
    schema = openapi(client)
    op = operations(schema)["listEvents"]
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert {"anyOf": [{"type": "integer"}, {"type": "null"}]}.items() <= \
        page["properties"]["next_after"].items()
    session = new_session(client, "weather")
    body = client.get(f"/v1/sessions/{session['id']}/events").json()
    assert body == {"items": [], "next_after": None}


def test_a_tiny_turn_timeout_is_a_422_not_a_500(client: httpx.Client) -> None:
    session = new_session(client, "weather")
    response = client.post(f"/v1/sessions/{session['id']}/turns",
                           json={"input": "hi", "timeout_s": 1e-300})
    assert_problem(response, 422)


def test_a_body_that_is_not_json_is_415(client: httpx.Client) -> None:
    session = new_session(client, "weather")
    response = client.patch(f"/v1/sessions/{session['id']}", content=b'{"state": {}}',
                            headers={"content-type": "text/plain"})
    assert_problem(response, 415, "unsupported_media_type")
    merge = client.patch(f"/v1/sessions/{session['id']}", content=b'{"state": {"a": 1}}',
                         headers={"content-type": "application/merge-patch+json"})
    assert merge.status_code == 200, merge.text


def test_docs_and_redoc_load_without_a_cdn(client: httpx.Client) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
        urls += re.findall(r"""url: ?['"]([^'"]+)['"]""", html.text)
        assert urls, html.text
        for url in urls:
            assert not re.match(r"(https?:)?//", url), f"{page} loads {url}"
            assert client.get(url).status_code == 200, url
    assert b"SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").content
    assert client.get("/docs/assets/nope.js").status_code == 404


def test_the_readme_lists_every_route(client: httpx.Client) -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("## HTTP API"):readme.index("Every error is")]
    rows = re.sub(r"\{\w+\}", "{id}", table)
    for path in [*openapi(client)["paths"], "/metrics", "/redoc"]:
        prefix = re.sub(r"\{\w+\}", "{id}", path)
        if path.endswith(("/pause", "/resume", "/stop")) and "/agents/" in path:
            prefix = "/v1/agents/{id}/pause"  # one row: pause|resume|stop
        assert f"{prefix}`" in rows or f"{prefix}?" in rows or f"{prefix}," in rows \
            or f"{prefix}\\|" in rows, path


def test_a_deadline_passed_in_the_queue_is_a_504() -> None:
    from roost.errors import RunTimeout

    assert RunTimeout("the run's deadline passed before it was admitted").status == 504


def test_if_none_match_on_a_session_is_a_304(client: httpx.Client) -> None:
    session = new_session(client, "weather")
    first = client.get(f"/v1/sessions/{session['id']}")
    etag = first.headers["etag"]
    same = client.get(f"/v1/sessions/{session['id']}", headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
    weak = client.get(f"/v1/sessions/{session['id']}", headers={"If-None-Match": f"W/{etag}"})
    assert weak.status_code == 304
    client.patch(f"/v1/sessions/{session['id']}", json={"state": {"n": 1}})
    changed = client.get(f"/v1/sessions/{session['id']}", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["state"] == {"n": 1}
