"""Bad input is a 4xx `application/problem+json` naming the field: never a 500, never a
write. Each case runs against a session that already has a turn in its log, and afterwards
the session (version, state, log), the session count and the run registry are unchanged and
the server still serves a turn."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from roost import Agent, Limits
from roost.testing.live import LiveServer
from roost.testing.scripted import ScriptedModel
from tests.server.conftest import PROBLEM_JSON, STORES, WAIT_S, new_session, serving

MAX_BODY = 1024
MAX_STATE = 200
MAX_INPUT = 50
TURNS = "/v1/sessions/{sid}/turns"
SESSION = "/v1/sessions/{sid}"
CREATE = "/v1/agents/echo/sessions"


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str  # "{sid}" is the test's session
    status: int
    type: str
    field: str | None = None  # the problem's field (a "query." prefix is accepted)
    json: Any = None
    content: bytes | None = None
    chunked: bool = False
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    bug: str | None = None  # a known bug: the case is a strict xfail


def raw(text: str) -> bytes:
    return text.encode()


CASES = [
    # -- POST /v1/sessions/{id}/turns ----------------------------------------------------
    Case("turn-malformed-json", "POST", TURNS, 400, "malformed_json", "body",
         content=raw('{"input": ')),
    Case("turn-not-utf8", "POST", TURNS, 400, "malformed_json", "body",
         content=b'\xff\xfe{"input": "x"}'),
    Case("turn-body-not-an-object", "POST", TURNS, 422, "invalid_input", "body", json=["hi"]),
    Case("turn-input-wrong-type", "POST", TURNS, 422, "invalid_input", "input", json={"input": 42}),
    Case("turn-input-null", "POST", TURNS, 422, "invalid_input", "input", json={"input": None}),
    Case("turn-input-missing", "POST", TURNS, 422, "invalid_input", "input", json={}),
    Case("turn-unknown-field", "POST", TURNS, 422, "invalid_input", "colour",
         json={"input": "hi", "colour": "red"}),
    Case("turn-input-empty", "POST", TURNS, 422, "invalid_input", "input", json={"input": ""}),
    Case("turn-input-blank", "POST", TURNS, 422, "invalid_input", "input",
         json={"input": " \n\t "}),
    Case("turn-input-lone-surrogate", "POST", TURNS, 400, "malformed_json", "body",
         content=raw('{"input": "hi \\ud800"}')),
    Case("turn-input-over-agent-limit", "POST", TURNS, 422, "invalid_input", "input",
         json={"input": "x" * (MAX_INPUT + 1)}),
    Case("turn-stream-wrong-type", "POST", TURNS, 422, "invalid_input", "stream",
         json={"input": "hi", "stream": [1]}),
    Case("turn-timeout-zero", "POST", TURNS, 422, "invalid_input", "timeout_s",
         json={"input": "hi", "timeout_s": 0}),
    Case("turn-timeout-text", "POST", TURNS, 422, "invalid_input", "timeout_s",
         json={"input": "hi", "timeout_s": "soon"}),
    Case("turn-priority-unknown", "POST", TURNS, 422, "invalid_input", "priority",
         json={"input": "hi", "priority": "urgent"}),
    Case("turn-not-json-content-type", "POST", TURNS, 415, "unsupported_media_type", None,
         content=raw('{"input": "hi"}'), headers={"Content-Type": "text/plain"}),
    Case("turn-body-over-limit", "POST", TURNS, 413, "payload_too_large", "body",
         json={"input": "x" * MAX_BODY}),
    Case("turn-chunked-body-over-limit", "POST", TURNS, 413, "payload_too_large", "body",
         json={"input": "x" * MAX_BODY}, chunked=True),
    Case("turn-unknown-session", "POST", "/v1/sessions/ses_nope/turns", 404,
         "session_not_found", json={"input": "hi"}),
    # -- POST /v1/agents/{name}/sessions -------------------------------------------------
    Case("create-unknown-agent", "POST", "/v1/agents/nope/sessions", 404, "agent_not_found",
         json={}),
    Case("create-user-id-wrong-type", "POST", CREATE, 422, "invalid_input", "user_id",
         json={"user_id": 7}),
    Case("create-user-id-too-long", "POST", CREATE, 422, "invalid_input", "user_id",
         json={"user_id": "u" * 257}),
    Case("create-state-not-an-object", "POST", CREATE, 422, "invalid_input", "state",
         json={"state": [1, 2]}),
    Case("create-state-too-large", "POST", CREATE, 422, "invalid_input", "state",
         json={"state": {"blob": "x" * MAX_STATE}}),
    Case("create-metadata-not-an-object", "POST", CREATE, 422, "invalid_input", "metadata",
         json={"metadata": "tags"}),
    Case("create-unknown-field", "POST", CREATE, 422, "invalid_input", "ttl", json={"ttl": 5}),
    Case("create-malformed-json", "POST", CREATE, 400, "malformed_json", "body",
         content=raw("{'state': {}}")),
    # A lone surrogate is not Unicode: the strict parser refuses the body as a whole.
    Case("create-state-lone-surrogate", "POST", CREATE, 400, "malformed_json", "body",
         content=raw('{"state": {"name": "\\ud800"}}')),
    Case("create-metadata-lone-surrogate", "POST", CREATE, 400, "malformed_json", "body",
         content=raw('{"metadata": {"name": "\\ud800"}}')),
    Case("create-state-nan", "POST", CREATE, 400, "malformed_json", "body",
         content=raw('{"state": {"ratio": NaN}}')),
    # -- PATCH /v1/sessions/{id} ---------------------------------------------------------
    Case("patch-bad-if-match", "PATCH", SESSION, 422, "invalid_input", "If-Match",
         json={"state": {"k": 2}}, headers={"If-Match": "version-one"}),
    Case("patch-fractional-if-match", "PATCH", SESSION, 422, "invalid_input", "If-Match",
         json={"state": {"k": 2}}, headers={"If-Match": '"1.5"'}),
    Case("patch-stale-if-match", "PATCH", SESSION, 412, "precondition_failed",
         json={"state": {"k": 2}}, headers={"If-Match": '"0"'}),
    Case("patch-state-missing", "PATCH", SESSION, 422, "invalid_input", "state", json={}),
    Case("patch-state-not-an-object", "PATCH", SESSION, 422, "invalid_input", "state",
         json={"state": "k=2"}),
    Case("patch-unknown-field", "PATCH", SESSION, 422, "invalid_input", "version",
         json={"state": {}, "version": 3}),
    Case("patch-state-too-large", "PATCH", SESSION, 422, "invalid_input", "state",
         json={"state": {"blob": "x" * MAX_STATE}}),
    Case("patch-body-over-limit", "PATCH", SESSION, 413, "payload_too_large", "body",
         json={"state": {"blob": "x" * MAX_BODY}}),
    Case("patch-unknown-session", "PATCH", "/v1/sessions/ses_nope", 404, "session_not_found",
         json={"state": {"k": 2}}),
    Case("patch-state-lone-surrogate", "PATCH", SESSION, 400, "malformed_json", "body",
         content=raw('{"state": {"name": "\\ud800"}}')),
    # -- reads with bad parameters -------------------------------------------------------
    Case("list-limit-zero", "GET", "/v1/sessions", 422, "invalid_input", "limit",
         params={"limit": "0"}),
    Case("list-limit-not-a-number", "GET", "/v1/sessions", 422, "invalid_input", "limit",
         params={"limit": "ten"}),
    Case("list-limit-too-large", "GET", "/v1/sessions", 422, "invalid_input", "limit",
         params={"limit": "100000"}),
    Case("list-bad-cursor", "GET", "/v1/sessions", 422, "invalid_input", "cursor",
         params={"cursor": "not-a-cursor!"}),
    Case("events-negative-after", "GET", SESSION + "/events", 422, "invalid_input", "after",
         params={"after": "-1"}),
    Case("events-after-not-a-number", "GET", SESSION + "/events", 422, "invalid_input", "after",
         params={"after": "first"}),
    Case("events-limit-zero", "GET", SESSION + "/events", 422, "invalid_input", "limit",
         params={"limit": "0"}),
    Case("events-unknown-session", "GET", "/v1/sessions/ses_nope/events", 404,
         "session_not_found"),
    Case("get-unknown-session", "GET", "/v1/sessions/ses_nope", 404, "session_not_found"),
    Case("delete-unknown-session", "DELETE", "/v1/sessions/ses_nope", 404, "session_not_found"),
    Case("get-unknown-run", "GET", "/v1/runs/run_nope", 404, "run_not_found"),
    Case("cancel-unknown-run", "POST", "/v1/runs/run_nope/cancel", 404, "run_not_found"),
    Case("follow-unknown-run", "GET", "/v1/runs/run_nope/events", 404, "run_not_found"),
    Case("follow-bad-last-event-id", "GET", "/v1/runs/{run}/events", 422, "invalid_input",
         "Last-Event-ID", headers={"Last-Event-ID": "latest"}),
]


@pytest.fixture(scope="module", params=STORES)
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    agent = Agent(name="echo", model=ScriptedModel(["ok"], repeat_last=True),
                  limits=Limits(max_input_chars=MAX_INPUT))
    with serving(tmp_path_factory.mktemp("bad-input")) as start:
        yield start(agent, store=request.param, server={"max_body_bytes": MAX_BODY},
                    sessions={"max_state_bytes": MAX_STATE})


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
        yield client


def snapshot(http: httpx.Client, session_id: str) -> dict[str, Any]:
    session = http.get(f"/v1/sessions/{session_id}").json()
    events = http.get(f"/v1/sessions/{session_id}/events", params={"limit": 1000}).json()
    count = len(http.get("/v1/sessions", params={"limit": 1000}).json()["items"])
    return {"session": session, "events": events["items"], "sessions": count}


def send(http: httpx.Client, case: Case, session_id: str, run_id: str) -> httpx.Response:
    path = case.path.format(sid=session_id, run=run_id)
    headers = dict(case.headers)
    content = case.content
    if case.json is not None or (case.content is None and case.method in ("POST", "PATCH")):
        content = orjson.dumps(case.json if case.json is not None else {})
    if content is not None:
        headers.setdefault("Content-Type", "application/json")
    if case.chunked and content is not None:
        body = content

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 100):
                yield body[start:start + 100]

        return http.request(case.method, path, content=chunks(), headers=headers,
                            params=case.params)
    return http.request(case.method, path, content=content, headers=headers, params=case.params)


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=f"BUG: {c.bug}", strict=True)]
                 if c.bug else [])
    for c in CASES
])
def test_bad_input_is_a_problem_and_writes_nothing(http: httpx.Client, server: LiveServer,
                                                   case: Case) -> None:
    session = new_session(http, "echo", state={"k": 1})
    first = http.post(f"/v1/sessions/{session['id']}/turns", json={"input": "hello"})
    assert first.json()["status"] == "completed"
    before = snapshot(http, session["id"])

    response = send(http, case, session["id"], first.json()["run_id"])

    assert response.status_code == case.status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    problem = response.json()
    assert problem["status"] == case.status
    assert problem["type"] == f"urn:roost:problem:{case.type}"
    assert problem["title"] and problem["detail"]
    if case.field is not None:
        assert problem.get("field") in (case.field, f"query.{case.field}"), problem
    assert snapshot(http, session["id"]) == before
    assert not server.runtime.runs
    # The server is unharmed: the session takes its next turn.
    again = http.post(f"/v1/sessions/{session['id']}/turns", json={"input": "still there?"})
    assert again.status_code == 200 and again.json()["status"] == "completed"


def test_a_declared_content_length_over_the_limit_is_refused_unread(server: LiveServer) -> None:
    """The 413 comes from the Content-Length alone: the server does not wait for the body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as raw_socket:
        raw_socket.sendall(b"POST /v1/sessions/ses_x/turns HTTP/1.1\r\nHost: test\r\n"
                           b"Content-Type: application/json\r\n"
                           + f"Content-Length: {MAX_BODY * 100}\r\n\r\n".encode())
        head = raw_socket.recv(65536)
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"application/problem+json" in head


def test_events_after_a_seq_beyond_int64_is_not_a_server_error(
        http: httpx.Client, server: LiveServer, request: pytest.FixtureRequest) -> None:
    session = new_session(http, "echo")
    response = http.get(f"/v1/sessions/{session['id']}/events", params={"after": str(2**63)})
    assert response.status_code in (200, 422), response.text
    if response.status_code == 200:
        assert response.json() == {"items": [], "next_after": None}
