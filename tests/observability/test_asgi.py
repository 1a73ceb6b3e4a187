"""The ASGI middleware over a small FastAPI app: ids, route labels, spans, access log."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from fastapi.responses import StreamingResponse
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from roost.observability import Observability, ObservabilityConfig, ObservabilityMiddleware
from roost.observability.logs import current_context
from tests.observability import (
    by_name,
    captured_logs,
    json_lines,
    make_request,
    make_response,
    make_run,
    scrape,
    traced,
    value,
)

REMOTE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
REMOTE_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-01"


def build_app(obs: Observability) -> FastAPI:
    app = FastAPI()
    seen: dict[str, Any] = {}
    app.state.seen = seen

    @app.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str) -> dict[str, str]:
        seen["context"] = dict(current_context())
        logging.getLogger("roost.server").info("reading session")
        return {"id": session_id}

    @app.post("/v1/runs")
    async def start_run() -> dict[str, str]:
        # What the runtime does: the run task is created inside the request.
        async def run_task() -> dict[str, str]:
            run = make_run()
            token = obs.hooks.run_start(run, model="openai:gpt-4o")
            request = make_request()
            call = obs.hooks.model_start(run, "openai:gpt-4o", request)
            obs.hooks.model_end(call, make_response(), None)
            run.status = "completed"
            obs.hooks.run_end(token, run)
            return request.metadata

        return await asyncio.create_task(run_task())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> Any:
            for _ in range(3):
                yield b"data: x\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["item_id"])

    app.mount("/api", Starlette(routes=[Route("/items/{item_id}", item)]))
    app.mount("/static", Starlette(routes=[Mount("/", routes=[])]))
    return app


async def no_receive() -> dict[str, Any]:
    raise AssertionError("not expected to read the request")


async def no_send(message: MutableMapping[str, Any]) -> None:
    raise AssertionError("not expected to respond")


def client(obs: Observability, app: Any = None) -> httpx.AsyncClient:
    wrapped = obs.asgi_middleware(app if app is not None else build_app(obs))
    transport = httpx.ASGITransport(app=wrapped, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_request_id_is_generated_or_taken_and_echoed() -> None:
    obs = Observability()
    app = build_app(obs)
    async with client(obs, app) as http:
        generated = await http.get("/v1/sessions/s1")
        given = await http.get("/v1/sessions/s1", headers={"X-Request-ID": "abc-123"})
        assert app.state.seen["context"]["request_id"] == "abc-123"
        hostile = await http.get("/v1/sessions/s1", headers={"X-Request-ID": "a b\x7f" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert given.headers["x-request-id"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])


async def test_http_metrics_are_labelled_by_route_template() -> None:
    obs = Observability()
    async with client(obs) as http:
        for sid in ("a", "b", "c"):
            assert (await http.get(f"/v1/sessions/{sid}")).status_code == 200
        assert (await http.get("/nope/123")).status_code == 404
        assert (await http.get("/api/items/42")).text == "42"
        assert (await http.post("/v1/sessions/a")).status_code == 405
        assert (await http.get("/boom")).status_code == 500
        assert (await http.get("/static/css/app.css")).status_code == 404
    s = scrape(obs)
    assert value(s, "roost_http_requests_total", route="/v1/sessions/{session_id}",
                 method="GET", status="200") == 3
    assert value(s, "roost_http_requests_total", route="/static/{path}", method="GET",
                 status="404") == 1
    assert value(s, "roost_http_request_duration_seconds_count",
                 route="/v1/sessions/{session_id}", method="GET") == 3
    assert value(s, "roost_http_requests_total", route="unmatched", method="GET",
                 status="404") == 1
    assert value(s, "roost_http_requests_total", route="/api/items/{item_id}", method="GET",
                 status="200") == 1
    assert value(s, "roost_http_requests_total", route="/v1/sessions/{session_id}",
                 method="POST", status="405") == 1
    assert value(s, "roost_http_requests_total", route="/boom", method="GET", status="500") == 1
    routes = {dict(labels).get("route") for (name, labels) in s
              if name == "roost_http_requests_total"}
    assert routes == {"/v1/sessions/{session_id}", "unmatched", "/api/items/{item_id}", "/boom",
                      "/static/{path}"}


async def test_incoming_traceparent_is_continued_by_a_server_span() -> None:
    obs, exporter = traced()
    async with client(obs) as http:
        response = await http.get("/v1/sessions/s1", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /v1/sessions/{session_id}"
    assert span.kind is SpanKind.SERVER
    assert f"{span.context.trace_id:032x}" == REMOTE_TRACE
    assert span.parent is not None and f"{span.parent.span_id:016x}" == REMOTE_SPAN
    assert span.parent.is_remote
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/v1/sessions/{session_id}"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["url.path"] == "/v1/sessions/s1"


async def test_a_run_started_in_a_request_is_a_child_of_the_request_span() -> None:
    obs, exporter = traced()
    async with client(obs) as http:
        response = await http.post("/v1/runs", headers={"traceparent": TRACEPARENT,
                                                        "tracestate": "vendor=abc"})
    spans = by_name(exporter.get_finished_spans())
    server, agent, chat = spans["POST /v1/runs"], spans["invoke_agent support"], spans["chat gpt-4o"]
    assert agent.parent is not None and agent.parent.span_id == server.context.span_id
    assert chat.parent is not None and chat.parent.span_id == agent.context.span_id
    # request -> invoke_agent -> chat, all in the caller's trace, and sent upstream.
    assert response.json()["traceparent"].split("-")[1] == REMOTE_TRACE
    assert response.json()["traceparent"].split("-")[2] == f"{chat.context.span_id:016x}"
    assert response.json()["tracestate"] == "vendor=abc"


async def test_errors_are_counted_and_marked_on_the_span() -> None:
    obs, exporter = traced()
    async with client(obs) as http:
        assert (await http.get("/boom")).status_code == 500
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "RuntimeError"


async def test_access_log_line_and_trace_id_without_tracing() -> None:
    obs = Observability(ObservabilityConfig(access_log=True))
    with captured_logs() as out:
        async with client(obs) as http:
            await http.get("/v1/sessions/s1?api_key=SECRET123", headers={
                "traceparent": TRACEPARENT, "X-Request-ID": "req-9"})
    handler_line, access = [x for x in json_lines(out) if x["logger"].startswith("roost")]
    assert handler_line["event"] == "reading session"
    for line in (handler_line, access):
        assert line["request_id"] == "req-9"
        assert line["trace_id"] == REMOTE_TRACE
    assert access["logger"] == "roost.access"
    assert access["method"] == "GET" and access["status"] == 200
    assert access["path"] == "/v1/sessions/s1"
    assert access["route"] == "/v1/sessions/{session_id}"
    assert access["duration_ms"] >= 0 and access["bytes"] > 0
    assert access["client"] == "127.0.0.1"
    assert "SECRET123" not in out.getvalue()


async def test_log_lines_of_a_traced_request_carry_its_server_span() -> None:
    obs, exporter = traced()
    with captured_logs() as out:
        async with client(obs) as http:
            await http.get("/v1/sessions/s1", headers={"traceparent": TRACEPARENT,
                                                       "X-Request-ID": "req-9"})
    (span,) = exporter.get_finished_spans()
    assert span.context is not None
    lines = [x for x in json_lines(out) if x["logger"].startswith("roost")]
    assert [x["logger"] for x in lines] == ["roost.server", "roost.access"]
    for line in lines:
        assert line["request_id"] == "req-9"
        assert line["trace_id"] == REMOTE_TRACE
        assert line["span_id"] == f"{span.context.span_id:016x}"


async def test_access_log_can_be_turned_off() -> None:
    obs = Observability(ObservabilityConfig(access_log=False))
    with captured_logs() as out:
        async with client(obs) as http:
            await http.get("/v1/sessions/s1")
    assert [x["event"] for x in json_lines(out) if x["logger"].startswith("roost")] == [
        "reading session"]


async def test_streamed_bytes_are_counted() -> None:
    obs = Observability()
    with captured_logs() as out:
        async with client(obs) as http:
            response = await http.get("/stream")
    assert response.text.count("data: x") == 3
    (access,) = [x for x in json_lines(out) if x["logger"] == "roost.access"]
    assert access["bytes"] == len(response.content)


async def test_websocket_gets_a_request_id_and_a_metric() -> None:
    obs = Observability()
    app = obs.asgi_middleware(build_app(obs))
    sent: list[dict[str, Any]] = []
    inbox: list[dict[str, Any]] = [{"type": "websocket.connect"},
                                   {"type": "websocket.disconnect", "code": 1000}]

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "root_path": "",
             "headers": [(b"x-request-id", b"ws-1")], "query_string": b"", "scheme": "ws",
             "client": ("127.0.0.1", 5000), "server": ("test", 80), "subprotocols": [],
             "asgi": {"version": "3.0"}}
    await app(scope, receive, send)
    accept = next(m for m in sent if m["type"] == "websocket.accept")
    assert (b"x-request-id", b"ws-1") in accept["headers"]
    assert value(scrape(obs), "roost_http_requests_total", route="/ws", method="WEBSOCKET",
                 status="101") == 1


async def test_a_cancelled_request_is_recorded_as_499() -> None:
    obs = Observability()
    started = asyncio.Event()

    async def hangs(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    app = obs.asgi_middleware(hangs)
    scope = {"type": "http", "method": "GET", "path": "/slow", "headers": []}

    async def serve() -> None:
        await app(scope, no_receive, no_send)

    task = asyncio.create_task(serve())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert value(scrape(obs), "roost_http_requests_total", route="unmatched", method="GET",
                 status="499") == 1


async def test_lifespan_passes_through_and_add_middleware_works() -> None:
    obs = Observability()
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])

    await obs.asgi_middleware(app)({"type": "lifespan"}, no_receive, no_send)
    assert calls == ["lifespan"]
    assert not [k for k in scrape(obs) if k[0] == "roost_http_requests_total"]
    # An app that returns without answering: the server answers 500, and so do the metrics.
    await obs.asgi_middleware(app)({"type": "http", "method": "GET", "path": "/"},
                                   no_receive, no_send)
    assert value(scrape(obs), "roost_http_requests_total", route="unmatched", method="GET",
                 status="500") == 1

    fastapi_app = build_app(obs)
    fastapi_app.add_middleware(ObservabilityMiddleware, observability=obs)
    transport = httpx.ASGITransport(app=fastapi_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get("/v1/sessions/x")
    assert "x-request-id" in response.headers
    assert value(scrape(obs), "roost_http_requests_total", route="/v1/sessions/{session_id}",
                 method="GET", status="200") == 1
