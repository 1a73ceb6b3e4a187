"""`/v1/sessions`: create, list (filters, cursor pages), read, patch state (If-Match CAS),
delete, and the event log, on every store the server can use."""

from __future__ import annotations

import threading
import uuid

import httpx
import pytest

from roost import Agent
from roost.testing.scripted import ScriptedModel, call
from tests.server.conftest import (
    WAIT_S,
    Hold,
    Serve,
    assert_problem,
    new_session,
    session_events,
    wait_until,
)


@pytest.fixture
def user() -> str:
    """A user id no other test uses, to list only this test's sessions."""
    return f"user-{uuid.uuid4().hex[:12]}"


def test_create_returns_201_with_the_session_and_its_location(http: httpx.Client) -> None:
    response = http.post("/v1/agents/weather/sessions",
                         json={"user_id": "u-1", "state": {"plan": "pro", "n": 1},
                               "metadata": {"source": "test"}})
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    session = response.json()
    assert session["id"].startswith("ses_")
    assert session["agent"] == "weather"
    assert session["tenant"] == "default"
    assert session["user_id"] == "u-1"
    assert session["state"] == {"plan": "pro", "n": 1}
    assert session["metadata"] == {"source": "test"}
    assert session["version"] == 0
    assert session["last_seq"] == 0
    assert session["created_at"] == session["updated_at"] > 1.6e9
    assert session["expires_at"] is None
    assert response.headers["Location"] == f"/v1/sessions/{session['id']}"

    fetched = http.get(response.headers["Location"])
    assert fetched.status_code == 200
    assert fetched.json() == session
    assert fetched.headers["ETag"] == '"0"'


def test_create_with_an_empty_object_uses_defaults(http: httpx.Client) -> None:
    session = new_session(http, "calculator")
    assert (session["user_id"], session["state"], session["metadata"]) == (None, {}, {})


def test_create_without_a_body_uses_defaults(http: httpx.Client) -> None:
    response = http.post("/v1/agents/weather/sessions")
    assert response.status_code == 201, response.text


def test_sessions_ttl_sets_expires_at(serve: Serve) -> None:
    server = serve(sessions={"ttl_s": 3600})
    with httpx.Client(base_url=server.url) as client:
        session = new_session(client, "weather")
    assert session["expires_at"] == pytest.approx(session["created_at"] + 3600)


def test_list_filters_by_agent_and_user(http: httpx.Client, user: str) -> None:
    alice, bob = f"{user}-alice", f"{user}-bob"
    a = new_session(http, "weather", user_id=alice)
    b = new_session(http, "weather", user_id=bob)
    c = new_session(http, "calculator", user_id=alice)

    def ids(**params: str) -> list[str]:
        response = http.get("/v1/sessions", params={"limit": "1000", **params})
        assert response.status_code == 200, response.text
        assert response.json()["next_cursor"] is None
        return [s["id"] for s in response.json()["items"]]

    everyone = ids()
    assert [i for i in everyone if i in (a["id"], b["id"], c["id"])] == [c["id"], b["id"], a["id"]]
    weather = ids(agent="weather")
    assert a["id"] in weather and b["id"] in weather and c["id"] not in weather
    assert all(s["agent"] == "weather" for s in http.get(
        "/v1/sessions", params={"agent": "weather", "limit": 1000}).json()["items"])
    assert ids(user_id=alice) == [c["id"], a["id"]]  # newest first
    assert ids(agent="weather", user_id=alice) == [a["id"]]
    assert ids(agent="calculator", user_id=bob) == []
    assert ids(agent="nope") == []


def test_list_pages_with_a_cursor_cover_everything_once(http: httpx.Client, user: str) -> None:
    created = [new_session(http, "weather", user_id=user)["id"] for _ in range(7)]
    seen: list[str] = []
    pages = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"user_id": user, "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = http.get("/v1/sessions", params=params).json()
        pages.append(len(page["items"]))
        seen.extend(s["id"] for s in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [3, 3, 1]
    assert seen == list(reversed(created))


def test_list_limit_is_capped_by_the_server(serve: Serve) -> None:
    server = serve(server={"max_list_limit": 2})
    with httpx.Client(base_url=server.url) as client:
        for _ in range(3):
            new_session(client, "weather")
        page = client.get("/v1/sessions", params={"limit": 500}).json()
    assert len(page["items"]) == 2
    assert page["next_cursor"] is not None


def test_patch_merges_a_state_delta_and_bumps_the_version(http: httpx.Client) -> None:
    session = new_session(http, "weather", state={"a": 1, "b": {"x": 1}, "gone": True})
    response = http.patch(f"/v1/sessions/{session['id']}",
                          json={"state": {"b": {"y": 2}, "c": [1, 2], "gone": None}})
    assert response.status_code == 200, response.text
    patched = response.json()
    # Shallow merge: "b" is replaced, not deep-merged; null deletes.
    assert patched["state"] == {"a": 1, "b": {"y": 2}, "c": [1, 2]}
    assert patched["version"] == 1
    assert patched["updated_at"] >= session["updated_at"]
    assert response.headers["ETag"] == '"1"'
    fetched = http.get(f"/v1/sessions/{session['id']}")
    assert fetched.json()["state"] == patched["state"]
    assert fetched.headers["ETag"] == '"1"'


@pytest.mark.parametrize("if_match", ['"0"', "0", 'W/"0"'])
def test_patch_with_a_matching_if_match_applies(http: httpx.Client, if_match: str) -> None:
    session = new_session(http, "weather")
    response = http.patch(f"/v1/sessions/{session['id']}", json={"state": {"k": "v"}},
                          headers={"If-Match": if_match})
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 1


def test_patch_with_a_stale_if_match_is_412_and_changes_nothing(http: httpx.Client) -> None:
    session = new_session(http, "weather", state={"k": 0})
    etag = http.get(f"/v1/sessions/{session['id']}").headers["ETag"]
    first = http.patch(f"/v1/sessions/{session['id']}", json={"state": {"k": 1}},
                       headers={"If-Match": etag})
    assert first.status_code == 200
    # A second writer with the same (now stale) ETag loses the compare-and-set.
    second = http.patch(f"/v1/sessions/{session['id']}", json={"state": {"k": 2}},
                        headers={"If-Match": etag})
    body = assert_problem(second, 412, "precondition_failed")
    assert "version 1" in body["detail"]
    after = http.get(f"/v1/sessions/{session['id']}").json()
    assert (after["state"], after["version"]) == ({"k": 1}, 1)


def test_patch_with_if_match_star_applies(http: httpx.Client) -> None:
    session = new_session(http, "weather")
    response = http.patch(f"/v1/sessions/{session['id']}", json={"state": {"k": 1}},
                          headers={"If-Match": "*"})
    assert response.status_code == 200, response.text


def test_patch_of_an_unknown_session_is_404(http: httpx.Client) -> None:
    assert_problem(http.patch("/v1/sessions/ses_nope", json={"state": {"a": 1}}), 404,
                   "session_not_found")


def test_delete_removes_the_session_and_its_log(http: httpx.Client, user: str) -> None:
    session = new_session(http, "weather", user_id=user)
    turn = http.post(f"/v1/sessions/{session['id']}/turns", json={"input": "weather in Lima"})
    run_id = turn.json()["run_id"]
    response = http.delete(f"/v1/sessions/{session['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert_problem(http.get(f"/v1/sessions/{session['id']}"), 404, "session_not_found")
    assert_problem(http.get(f"/v1/sessions/{session['id']}/events"), 404, "session_not_found")
    assert_problem(http.get(f"/v1/runs/{run_id}"), 404, "run_not_found")
    assert http.get("/v1/sessions", params={"user_id": user}).json()["items"] == []
    assert_problem(http.delete(f"/v1/sessions/{session['id']}"), 404, "session_not_found")
    assert_problem(http.post(f"/v1/sessions/{session['id']}/turns", json={"input": "hi"}), 404,
                   "session_not_found")


def test_events_page_with_after_and_limit(http: httpx.Client) -> None:
    session = new_session(http, "weather")
    for city in ("Paris", "Tokyo"):
        turn = http.post(f"/v1/sessions/{session['id']}/turns", json={"input": f"weather in {city}"})
        assert turn.json()["status"] == "completed"
    everything = session_events(http, session["id"])
    assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
    assert len(everything) == 14  # 7 per turn: started, user, call msg, tool.call, result, answer, done

    url = f"/v1/sessions/{session['id']}/events"
    first = http.get(url, params={"limit": 5}).json()
    assert [e["seq"] for e in first["items"]] == [1, 2, 3, 4, 5]
    assert first["next_after"] == 5
    second = http.get(url, params={"after": first["next_after"], "limit": 5}).json()
    assert [e["seq"] for e in second["items"]] == [6, 7, 8, 9, 10]
    last = http.get(url, params={"after": 10, "limit": 5}).json()
    assert [e["seq"] for e in last["items"]] == [11, 12, 13, 14]
    assert last["next_after"] is None
    assert http.get(url, params={"after": 14}).json() == {"items": [], "next_after": None}
    assert set(everything[0]) == {"seq", "type", "run_id", "data", "ts"}


def test_deleting_a_session_cancels_its_active_run(serve: Serve) -> None:
    hold = Hold()
    agent = Agent(name="held", model=ScriptedModel([call("hold"), "never"]), tools=[hold.tool])
    server = serve(agent)
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
        session = new_session(client, "held")
        with httpx.Client(base_url=server.url, timeout=WAIT_S) as turner:
            result: list[httpx.Response] = []
            worker = threading.Thread(target=lambda: result.append(turner.post(
                f"/v1/sessions/{session['id']}/turns", json={"input": "go"})))
            worker.start()
            hold.entered.wait_sync()
            assert client.delete(f"/v1/sessions/{session['id']}").status_code == 204
            worker.join(WAIT_S)
        assert not worker.is_alive()
        assert result[0].status_code == 200
        assert result[0].json()["status"] == "cancelled"
        assert hold.cancelled.is_open
        assert_problem(client.get(f"/v1/sessions/{session['id']}"), 404)
        wait_until(lambda: not server.runtime.runs, what="the run to leave the registry")
        # The server keeps serving.
        assert client.get("/readyz").status_code == 200


def test_tenants_never_see_each_others_sessions_or_runs(serve: Serve) -> None:
    server = serve(server={"tenant_header": "X-Tenant"})
    with httpx.Client(base_url=server.url, timeout=WAIT_S, headers={"X-Tenant": "acme"}) as acme, \
            httpx.Client(base_url=server.url, timeout=WAIT_S,
                         headers={"X-Tenant": "globex"}) as globex:
        session = new_session(acme, "weather", user_id="shared-user")
        assert session["tenant"] == "acme"
        run_id = acme.post(f"/v1/sessions/{session['id']}/turns",
                           json={"input": "weather in Paris"}).json()["run_id"]
        sid = session["id"]
        for response in (
            globex.get(f"/v1/sessions/{sid}"),
            globex.patch(f"/v1/sessions/{sid}", json={"state": {"x": 1}}),
            globex.get(f"/v1/sessions/{sid}/events"),
            globex.post(f"/v1/sessions/{sid}/turns", json={"input": "hi"}),
            globex.delete(f"/v1/sessions/{sid}"),
        ):
            assert_problem(response, 404, "session_not_found")
        for response in (globex.get(f"/v1/runs/{run_id}"),
                         globex.post(f"/v1/runs/{run_id}/cancel"),
                         globex.get(f"/v1/runs/{run_id}/events")):
            assert_problem(response, 404, "run_not_found")
        assert globex.get("/v1/sessions", params={"user_id": "shared-user"}).json()["items"] == []
        # Nothing globex tried touched acme's session.
        mine = acme.get(f"/v1/sessions/{sid}").json()
        assert mine["state"] == {} and mine["last_seq"] == 7
        assert [s["id"] for s in acme.get("/v1/sessions").json()["items"]] == [sid]
        # Without the header a request is the `default` tenant's.
        with httpx.Client(base_url=server.url, timeout=WAIT_S) as anonymous:
            assert_problem(anonymous.get(f"/v1/sessions/{sid}"), 404)
