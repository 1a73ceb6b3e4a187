"""`HotPath` (turns and session creation, plain ASGI) answers exactly as the FastAPI routes would.

Both are driven in-process: the app `create_app` builds (the middleware answers turns before
routing) and a bare FastAPI app with the same routers and error handlers (the route answers).
Every case must give the same status and the same problem body, byte for byte.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from roost import Agent, Runtime, Settings
from roost.agent import Limits
from roost.server import problems
from roost.server.app import create_app
from roost.server.routes import runs, sessions
from roost.testing import ScriptedModel

TURN_CASES: list[tuple[str, dict[str, Any]]] = [
    ("ok", {"json": {"input": "hello"}}),
    ("ok-background", {"json": {"input": "hello", "priority": "background", "timeout_s": 5}}),
    ("malformed-json", {"content": b'{"input": '}),
    ("not-utf8", {"content": b'\xff\xfe{"input": "x"}'}),
    ("lone-surrogate", {"content": b'{"input": "hi \\ud800"}'}),
    ("nan", {"content": b'{"input": "hi", "timeout_s": NaN}'}),
    ("not-an-object", {"json": ["hi"]}),
    ("input-wrong-type", {"json": {"input": 42}}),
    ("input-missing", {"json": {}}),
    ("input-blank", {"json": {"input": " \n "}}),
    ("input-over-limit", {"json": {"input": "x" * 51}}),
    ("unknown-field", {"json": {"input": "hi", "colour": "red"}}),
    ("two-errors", {"json": {"input": 1, "stream": [1]}}),
    ("priority-unknown", {"json": {"input": "hi", "priority": "urgent"}}),
    ("timeout-zero", {"json": {"input": "hi", "timeout_s": 0}}),
    ("ok-content-type-json-suffix", {"content": b'{"input": "hi"}',
                                  "headers": {"Content-Type": "application/merge+json"}}),
    ("ok-content-type-charset", {"content": b'{"input": "hi"}',
                              "headers": {"Content-Type": "application/json; charset=utf-8"}}),
    ("empty-body", {"content": b""}),
]
SESSION_CASES: list[tuple[str, dict[str, Any]]] = [
    ("ok-empty-object", {"json": {}}),
    ("ok-all-fields", {"json": {"user_id": "ada", "state": {"plan": "pro"},
                                "metadata": {"source": "web"}}}),
    ("ok-null", {"content": b"null"}),
    ("ok-no-body", {"content": b""}),
    ("ok-no-body-no-type", {"content": b"", "headers": {"Content-Type": ""}}),
    ("malformed-json", {"content": b'{"user_id": '}),
    ("nan", {"content": b'{"state": {"x": NaN}}'}),
    ("not-an-object", {"json": ["ada"]}),
    ("unknown-field", {"json": {"colour": "red"}}),
    ("user-id-wrong-type", {"json": {"user_id": 7}}),
    ("user-id-too-long", {"json": {"user_id": "u" * 257}}),
    ("state-not-an-object", {"json": {"state": [1, 2]}}),
    ("state-over-limit", {"json": {"state": {"blob": "x" * 200}}}),
    ("metadata-over-limit", {"json": {"metadata": {"blob": "x" * 200}}}),
    ("ok-state-huge-int", {"content": b'{"state": {"n": 123456789012345678901234567890}}'}),
]
# Where the two differ on purpose: the middleware names the Content-Type problem; FastAPI
# reports a body it did not parse as JSON as "not a dictionary".
NOT_JSON = [{"content": b'{"input": "hi"}', "headers": {"Content-Type": "text/plain"}},
            {"content": b'{"input": "hi"}', "headers": {"Content-Type": ""}}]


def _agent() -> Agent:
    return Agent(name="echo", model=ScriptedModel(["hi there"], repeat_last=True),
                 limits=Limits(max_input_chars=50))


async def _create(client: httpx.AsyncClient, agent: str, case: dict[str, Any]) -> httpx.Response:
    headers = {"Content-Type": "application/json", **case.get("headers", {})}
    headers = {k: v for k, v in headers.items() if v}
    content = orjson.dumps(case["json"]) if "json" in case else case["content"]
    return await client.post(f"/v1/agents/{agent}/sessions", content=content, headers=headers)


def _route_only_app(runtime: Runtime) -> FastAPI:
    """The routers and handlers of `create_app`, without its middleware."""
    app = FastAPI()
    app.state.runtime = runtime
    app.state.tenant_header = runtime.settings.server.tenant_header
    problems.install(app)
    app.include_router(sessions.router)
    app.include_router(runs.router)
    return app


@pytest.fixture
async def clients() -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, Runtime]]:
    runtime = Runtime(Settings.model_validate({"store": {"url": "memory://"},
                                               "sessions": {"max_state_bytes": 100}}),
                      [_agent()])
    await runtime.start()
    fast = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(runtime)),
                             base_url="http://roost")
    routed = httpx.AsyncClient(transport=httpx.ASGITransport(app=_route_only_app(runtime)),
                               base_url="http://roost")
    try:
        yield fast, routed, runtime
    finally:
        await fast.aclose()
        await routed.aclose()
        await runtime.close()


async def _turn(client: httpx.AsyncClient, session_id: str, case: dict[str, Any]) -> httpx.Response:
    headers = {"Content-Type": "application/json", **case.get("headers", {})}
    headers = {k: v for k, v in headers.items() if v}
    content = orjson.dumps(case["json"]) if "json" in case else case["content"]
    return await client.post(f"/v1/sessions/{session_id}/turns", content=content,
                             headers=headers)


def _comparable(response: httpx.Response) -> Any:
    body = response.json()
    if response.status_code == 200:  # a run: its ids and times differ, its shape must not
        return {"status": body["status"], "output": body["output"],
                "events": [e["type"] for e in body["events"]]}
    return body


@pytest.mark.parametrize(("name", "case"), TURN_CASES, ids=[n for n, _ in TURN_CASES])
async def test_same_answer_as_the_route(clients: Any, name: str, case: dict[str, Any]) -> None:
    fast, routed, runtime = clients
    answers = []
    for client in (fast, routed):
        session = (await client.post("/v1/agents/echo/sessions", json={})).json()
        answers.append(await _turn(client, session["id"], case))
    a, b = answers
    assert (a.status_code, _comparable(a)) == (b.status_code, _comparable(b))
    assert a.headers["content-type"] == b.headers["content-type"]
    if name.startswith("ok"):
        assert a.status_code == 200 and a.json()["output"] == "hi there"
    else:
        assert a.status_code in (400, 422)


async def test_unknown_session_and_overload_match(clients: Any) -> None:
    fast, routed, runtime = clients
    for client in (fast, routed):
        missing = await client.post("/v1/sessions/ses_nope/turns", json={"input": "hi"})
        assert missing.status_code == 404
        assert missing.json()["type"] == "urn:roost:problem:session_not_found"
    runtime.draining = True
    a = await _turn(fast, "ses_any", {"json": {"input": "hi"}})
    b = await _turn(routed, "ses_any", {"json": {"input": "hi"}})
    assert a.status_code == b.status_code == 503
    assert a.json() == b.json() and a.headers["retry-after"] == b.headers["retry-after"]


@pytest.mark.parametrize(("name", "case"), SESSION_CASES, ids=[n for n, _ in SESSION_CASES])
async def test_sessions_are_created_as_the_route_creates_them(
        clients: Any, name: str, case: dict[str, Any]) -> None:
    fast, routed, runtime = clients
    a, b = [await _create(client, "echo", case) for client in (fast, routed)]
    assert a.status_code == b.status_code
    assert a.headers["content-type"] == b.headers["content-type"]
    if name.startswith("ok"):
        assert a.status_code == 201
        made = [r.json() for r in (a, b)]
        for body, response in zip(made, (a, b), strict=True):
            assert response.headers["location"] == f"/v1/sessions/{body['id']}"
            assert await runtime.store.get_session("default", body["id"])  # really stored
        shape = [{k: v for k, v in m.items() if k not in ("id", "created_at", "updated_at",
                                                          "expires_at")} for m in made]
        assert shape[0] == shape[1]
    else:
        assert a.status_code in (400, 422) and a.json() == b.json()


async def test_a_session_for_an_unknown_agent_matches(clients: Any) -> None:
    fast, routed, _ = clients
    a, b = [await _create(client, "nobody", {"json": {}}) for client in (fast, routed)]
    assert a.status_code == b.status_code == 404 and a.json() == b.json()


@pytest.mark.parametrize("case", NOT_JSON, ids=["text-plain", "none"])
async def test_content_type_that_is_not_json(clients: Any, case: dict[str, Any]) -> None:
    fast, routed, _ = clients
    for client in (fast, routed):
        session = (await client.post("/v1/agents/echo/sessions", json={})).json()
        response = await _turn(client, session["id"], case)
        assert response.status_code == 415
        assert response.json()["type"].endswith("unsupported_media_type")
    session = (await fast.post("/v1/agents/echo/sessions", json={})).json()
    detail = (await _turn(fast, session["id"], case)).json()["detail"]
    assert "Content-Type" in detail


async def test_other_methods_and_paths_pass_through(clients: Any) -> None:
    fast, _, _ = clients
    session = (await fast.post("/v1/agents/echo/sessions", json={})).json()
    assert (await fast.get(f"/v1/sessions/{session['id']}/turns")).status_code == 405
    assert (await fast.post(f"/v1/sessions/{session['id']}/turns/x",
                            json={"input": "hi"})).status_code == 404
    assert (await fast.post(f"/v1/sessions/{session['id']}/turnsx",
                            json={"input": "hi"})).status_code == 404


def test_route_still_documented() -> None:
    runtime = Runtime(Settings.model_validate({"store": {"url": "memory://"}}), [_agent()])
    schema = create_app(runtime).api.openapi()
    operation = schema["paths"]["/v1/sessions/{session_id}/turns"]["post"]
    assert "TurnCreate" in orjson.dumps(operation["requestBody"]).decode()


async def test_hot_paths_are_labelled_by_their_route_in_metrics() -> None:
    from roost.observability import Observability, ObservabilityConfig
    from tests.observability import scrape, value

    runtime = Runtime(Settings.model_validate({"store": {"url": "memory://"}}), [_agent()])
    obs = Observability(ObservabilityConfig(log_format="json"))
    await runtime.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(runtime, obs)),
                                     base_url="http://roost") as client:
            session = (await client.post("/v1/agents/echo/sessions", json={})).json()
            ok = await _turn(client, session["id"], {"json": {"input": "hello"}})
            bad = await _turn(client, session["id"], {"json": {}})
        assert (ok.status_code, bad.status_code) == (200, 422)
        assert ok.headers["x-request-id"]  # the observability layer wraps the hot path too
        route = "/v1/sessions/{session_id}/turns"
        samples = scrape(obs)
        assert value(samples, "roost_http_requests_total", route="/v1/agents/{name}/sessions",
                     method="POST", status="201") == 1
        assert value(samples, "roost_http_requests_total", route=route, method="POST",
                     status="200") == 1
        assert value(samples, "roost_http_requests_total", route=route, method="POST",
                     status="422") == 1
    finally:
        await runtime.close()


async def test_a_bug_on_the_hot_path_is_a_logged_problem_500(
        clients: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    fast, _, runtime = clients
    session = (await fast.post("/v1/agents/echo/sessions", json={})).json()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(runtime, "submit_turn", broken)
    response = await _turn(fast, session["id"], {"json": {"input": "hello"}})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:roost:problem:internal_error"
    assert "a bug" not in response.text  # details stay in the log
    assert any("a bug" in (r.exc_text or "") or (r.exc_info and "a bug" in str(r.exc_info[1]))
               for r in caplog.records)


async def test_the_hot_paths_answer_without_their_fastapi_routes() -> None:
    runtime = Runtime(Settings.model_validate({"store": {"url": "memory://"}}), [_agent()])
    app = create_app(runtime)
    hot = {"/v1/agents/{name}/sessions", "/v1/sessions/{session_id}/turns"}
    app.api.router.routes[:] = [r for r in app.api.router.routes
                                if getattr(r, "path", None) not in hot]
    await runtime.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://roost") as client:
            created = await client.post("/v1/agents/echo/sessions", json={"user_id": "ada"})
            assert created.status_code == 201 and created.json()["user_id"] == "ada"
            turn = await _turn(client, created.json()["id"], {"json": {"input": "hello"}})
            assert turn.status_code == 200 and turn.json()["output"] == "hi there"
            # and the rest is FastAPI's: the session can be read back through its route
            got = await client.get(f"/v1/sessions/{created.json()['id']}")
            assert got.status_code == 200
    finally:
        await runtime.close()
