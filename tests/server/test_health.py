"""/healthz, /readyz, and the self-describing endpoints (/openapi.json, /docs)."""

from __future__ import annotations

import httpx

from tests.server.conftest import Serve, assert_problem, new_session


def test_healthz_says_ok(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_names_the_store_it_checked(client: httpx.Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "store": "memory"}


def test_a_draining_server_is_alive_but_not_ready_and_refuses_turns(serve: Serve) -> None:
    server = serve()
    with httpx.Client(base_url=server.url) as client:
        session = new_session(client, "weather")
        server.runtime.draining = True  # what SIGTERM does first (roost.server.serve)
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert_problem(ready, 503, "draining")
        assert ready.headers["Retry-After"] == "1"
        turn = client.post(f"/v1/sessions/{session['id']}/turns", json={"input": "hi"})
        body = assert_problem(turn, 503, "agent_unavailable")
        assert "shutting down" in body["detail"]
        assert turn.headers["Retry-After"] == "1"
        # Sessions stay readable while draining; the refused turn wrote nothing.
        assert client.get(f"/v1/sessions/{session['id']}").json()["version"] == 0


def test_openapi_describes_every_public_route(client: httpx.Client) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["info"]["title"] == "Roost"
    paths = spec["paths"]
    for path, method in [
        ("/v1/agents", "get"),
        ("/v1/agents/{name}", "get"),
        ("/v1/agents/{name}/sessions", "post"),
        ("/v1/sessions", "get"),
        ("/v1/sessions/{session_id}", "get"),
        ("/v1/sessions/{session_id}", "patch"),
        ("/v1/sessions/{session_id}", "delete"),
        ("/v1/sessions/{session_id}/events", "get"),
        ("/v1/sessions/{session_id}/turns", "post"),
        ("/v1/runs/{run_id}", "get"),
        ("/v1/runs/{run_id}/cancel", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from OpenAPI"
    turn = paths["/v1/sessions/{session_id}/turns"]["post"]
    assert "text/event-stream" in turn["responses"]["200"]["content"]
    schema = spec["components"]["schemas"]["TurnCreate"]
    assert schema["required"] == ["input"]
    assert schema["additionalProperties"] is False


def test_docs_page_serves_html(client: httpx.Client) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text


def test_unknown_path_and_wrong_method_are_problems(client: httpx.Client) -> None:
    assert_problem(client.get("/v1/nope"), 404, "not_found")
    assert_problem(client.put("/v1/agents"), 405, "method_not_allowed")
