"""Admission over real HTTP: 503/429 with Retry-After, queue exits (disconnect, deadline),
priorities, and `/v1/admin/stats`.

Every agent here runs on one `Triage` model: an input starting with "hold" parks its run in
the `hold` tool (`Hold`) until the test releases it, so "the slots are busy" is a fact the
test controls, not a timing guess; any other input is answered at once. The model records
the order in which runs reached it, which is the order admission started them.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest

from roost import Agent, ModelRequest
from roost.runtime.admission import Slot
from roost.runtime.runtime import Runtime
from roost.testing.scripted import ScriptedModel, Step, call
from tests.server.conftest import (
    STORES,
    WAIT_S,
    Hold,
    Serve,
    anew_session,
    assert_problem,
)

TENANT = "X-Tenant"


class Triage:
    """The model's one step: "hold…" inputs call the `hold` tool, others get an answer."""

    def __init__(self) -> None:
        self.started: list[str] = []  # the user inputs, in the order their runs reached us

    def __call__(self, request: ModelRequest) -> Step:
        last = request.messages[-1]
        if last.role == "tool":
            return "released"
        text = last.content or ""
        self.started.append(text)
        return call("hold") if text.startswith("hold") else f"answer to {text}"


def held_agent(hold: Hold, triage: Triage) -> Agent:
    return Agent(name="held", model=ScriptedModel([triage], repeat_last=True), tools=[hold.tool])


def tenant(name: str) -> dict[str, str]:
    return {TENANT: name}


async def post_turn(http: httpx.AsyncClient, session_id: str, text: str, *,
                    headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    return await http.post(f"/v1/sessions/{session_id}/turns", json={"input": text, **body},
                           headers=headers)


async def stats(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/v1/admin/stats")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def stats_when(http: httpx.AsyncClient, predicate: Callable[[dict[str, Any]], bool],
                     what: str) -> dict[str, Any]:
    """Poll `/v1/admin/stats` until `predicate` holds: admission has no event a client could
    await, and stats are exactly what an operator would watch."""
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                body = await stats(http)
                if predicate(body):
                    return body
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise TimeoutError(f"timed out waiting for {what}") from None


async def events(http: httpx.AsyncClient, session_id: str,
                 headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    response = await http.get(f"/v1/sessions/{session_id}/events", headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def session_version(http: httpx.AsyncClient, session_id: str,
                          headers: dict[str, str] | None = None) -> int:
    response = await http.get(f"/v1/sessions/{session_id}", headers=headers)
    assert response.status_code == 200, response.text
    version: int = response.json()["version"]
    return version


async def open_session(http: httpx.AsyncClient, name: str) -> str:
    """A new session of `held` owned by tenant `name`; returns its id."""
    response = await http.post("/v1/agents/held/sessions", json={}, headers=tenant(name))
    assert response.status_code == 201, response.text
    assert response.json()["tenant"] == name
    session_id: str = response.json()["id"]
    return session_id


def retry_after(response: httpx.Response) -> int:
    """The Retry-After header: whole seconds, at least 1, echoed in the problem body."""
    value = response.headers["retry-after"]
    assert value.isdigit(), value
    seconds = int(value)
    assert seconds >= 1
    assert response.json()["retry_after"] == seconds
    return seconds


async def until(awaitable: Awaitable[Any]) -> Any:
    async with asyncio.timeout(WAIT_S):
        return await awaitable


class StoreCalls:
    """A transparent proxy over the runtime's store recording every method called."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return attr(*args, **kwargs)

        return record


class TimedReserve:
    """Wraps `AdmissionController.reserve` (in the server's thread) to time each decision."""

    def __init__(self, reserve: Callable[..., Slot]) -> None:
        self.reserve = reserve
        self.rejections: list[float] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Slot:
        started = time.perf_counter()
        try:
            return self.reserve(*args, **kwargs)
        except Exception:
            self.rejections.append(time.perf_counter() - started)
            raise


# -- global limits: 503 ----------------------------------------------------------------------
@pytest.mark.parametrize("store", STORES)
async def test_a_full_server_answers_503_at_once_and_touches_nothing(
        serve: Serve, monkeypatch: pytest.MonkeyPatch, store: str) -> None:
    hold, triage = Hold(), Triage()
    server = serve(held_agent(hold, triage), store=store,
                   admission={"max_running": 1, "max_queued": 0})
    runtime: Runtime = server.runtime
    timed = TimedReserve(runtime.admission.reserve)
    monkeypatch.setattr(runtime.admission, "reserve", timed)
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        busy = await anew_session(http, "held")
        idle = await anew_session(http, "held")
        first = asyncio.create_task(post_turn(http, busy["id"], "hold on"))
        await until(hold.entered.wait())
        version = await session_version(http, idle["id"])
        recorder = StoreCalls(runtime.store)
        monkeypatch.setattr(runtime, "store", recorder)

        rejected = [await post_turn(http, idle["id"], f"try {i}") for i in range(3)]

        assert recorder.calls == []  # no session load, no run record, no event append
        assert not first.done() and not hold.released.is_open  # the slot is still busy
        for response in rejected:
            body = assert_problem(response, 503, "server_overloaded")
            assert "capacity" in body["detail"]
            retry_after(response)
        # The decision is microseconds of work; the best of three allows for a preempted one.
        assert len(timed.rejections) == 3
        assert min(timed.rejections) < 0.001, timed.rejections
        monkeypatch.undo()  # the real store again, for the reads below
        assert await session_version(http, idle["id"]) == version
        assert await events(http, idle["id"]) == []
        assert [h.run.session_id for h in list(runtime.runs.values())] == [busy["id"]]
        assert triage.started == ["hold on"]

        hold.release()
        assert (await until(first)).json()["status"] == "completed"
        after = await post_turn(http, idle["id"], "now")  # capacity is back
        assert after.status_code == 200 and after.json()["output"] == "answer to now"


# -- tenant quota and rate: 429 --------------------------------------------------------------
async def test_a_tenant_over_quota_gets_429_while_another_is_served(serve: Serve) -> None:
    hold, triage = Hold(), Triage()
    server = serve(held_agent(hold, triage), server={"tenant_header": TENANT},
                   admission={"max_running": 8, "max_queued": 8,
                              "tenants": {"acme": {"max_running": 1, "max_queued": 0}}})
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        acme = [await open_session(http, "acme") for _ in range(2)]
        globex = await open_session(http, "globex")
        first = asyncio.create_task(post_turn(http, acme[0], "hold acme",
                                              headers=tenant("acme")))
        await until(hold.entered.wait())

        over, other = await asyncio.gather(
            post_turn(http, acme[1], "more acme", headers=tenant("acme")),
            post_turn(http, globex, "globex", headers=tenant("globex")))

        body = assert_problem(over, 429, "tenant_overloaded")
        assert "acme" in body["detail"]
        retry_after(over)
        assert other.status_code == 200, other.text
        assert other.json()["status"] == "completed"
        assert other.json()["output"] == "answer to globex"
        assert not first.done()  # acme's slot was busy throughout
        assert await events(http, acme[1], tenant("acme")) == []
        hold.release()
        assert (await until(first)).json()["status"] == "completed"


async def test_a_tenant_over_its_rate_is_told_when_a_token_is_back(serve: Serve) -> None:
    triage = Triage()
    server = serve(held_agent(Hold(), triage), server={"tenant_header": TENANT},
                   admission={"tenants": {"slow": {"rate": 0.2, "burst": 1}}})
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S,
                                 headers=tenant("slow")) as http:
        session = await anew_session(http, "held")
        ok = await post_turn(http, session["id"], "one")
        assert ok.status_code == 200 and ok.json()["status"] == "completed"
        version = await session_version(http, session["id"])

        limited = await post_turn(http, session["id"], "two")

        body = assert_problem(limited, 429, "tenant_overloaded")
        assert "rate" in body["detail"]
        # One token per 5 s, just spent: the next is ~5 s away (rounded to whole seconds).
        assert 4 <= retry_after(limited) <= 5
        assert await session_version(http, session["id"]) == version
        assert triage.started == ["one"]
        other = await open_session(http, "unlimited")
        served = await post_turn(http, other, "three", headers=tenant("unlimited"))
        assert served.status_code == 200  # the bucket is the tenant's, not the server's


# -- leaving the queue -----------------------------------------------------------------------
async def test_a_queued_turn_whose_client_leaves_is_dropped_unstarted(serve: Serve) -> None:
    hold, triage = Hold(), Triage()
    server = serve(held_agent(hold, triage), admission={"max_running": 1, "max_queued": 4})
    runtime: Runtime = server.runtime
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        busy = await anew_session(http, "held")
        waiting = await anew_session(http, "held")
        first = asyncio.create_task(post_turn(http, busy["id"], "hold on"))
        await until(hold.entered.wait())
        body = orjson.dumps({"input": "never"})
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as raw:
            raw.sendall(f"POST /v1/sessions/{waiting['id']}/turns HTTP/1.1\r\nHost: test\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                        .encode() + body)
            await stats_when(http, lambda s: s["queued"] == 1, "the turn to queue")
            [queued] = [h for h in list(runtime.runs.values())
                        if h.run.session_id == waiting["id"]]
        # The socket is closed: the server notices and withdraws the turn from the queue.
        after = await stats_when(http, lambda s: s["queued"] == 0, "the turn to leave")
        assert after["rejected"]["cancelled_in_queue"] == 1
        assert after["running"] == 1 and after["admitted"] == 1
        run = (await http.get(f"/v1/runs/{queued.run.id}")).json()
        assert run["status"] == "cancelled"
        assert await events(http, waiting["id"]) == []  # no run.started, nothing at all

        hold.release()
        assert (await until(first)).json()["status"] == "completed"
        assert triage.started == ["hold on"]
        final = await stats(http)
        assert final["running"] == 0 and final["admitted"] == 1


async def test_a_queued_turn_past_its_deadline_times_out_unstarted(serve: Serve) -> None:
    hold, triage = Hold(), Triage()
    server = serve(held_agent(hold, triage), admission={"max_running": 1, "max_queued": 4})
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        busy = await anew_session(http, "held")
        waiting = await anew_session(http, "held")
        first = asyncio.create_task(post_turn(http, busy["id"], "hold on"))
        await until(hold.entered.wait())

        late = await post_turn(http, waiting["id"], "too late", timeout_s=0.2)

        assert not first.done()  # it timed out in the queue, behind the held run
        assert late.status_code == 200, late.text
        result = late.json()
        assert result["status"] == "timed_out"
        assert result["error"]["type"] == "timed_out"
        assert "run.started" not in [e["type"] for e in result["events"]]
        run = (await http.get(f"/v1/runs/{result['run_id']}")).json()
        assert run["status"] == "timed_out"
        assert await events(http, waiting["id"]) == []
        snapshot = await stats(http)
        assert snapshot["rejected"]["deadline_expired"] == 1
        assert snapshot["queued"] == 0 and snapshot["running"] == 1
        hold.release()
        await until(first)
        assert triage.started == ["hold on"]


# -- priorities ------------------------------------------------------------------------------
async def test_an_interactive_turn_overtakes_a_queued_background_one(serve: Serve) -> None:
    hold, triage = Hold(), Triage()
    server = serve(held_agent(hold, triage), admission={"max_running": 1, "max_queued": 4})
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        sessions = [(await anew_session(http, "held"))["id"] for _ in range(3)]
        first = asyncio.create_task(post_turn(http, sessions[0], "hold on"))
        await until(hold.entered.wait())
        background = asyncio.create_task(
            post_turn(http, sessions[1], "background", priority="background"))
        await stats_when(http, lambda s: s["queued_by_priority"]["background"] == 1,
                         "the background turn to queue")
        interactive = asyncio.create_task(post_turn(http, sessions[2], "interactive"))
        await stats_when(http, lambda s: s["queued_by_priority"]["interactive"] == 1,
                         "the interactive turn to queue")

        hold.release()
        results = await until(asyncio.gather(first, background, interactive))

        assert [r.json()["status"] for r in results] == ["completed"] * 3
        assert triage.started == ["hold on", "interactive", "background"]


# -- statistics ------------------------------------------------------------------------------
async def test_admin_stats_show_work_by_tenant_and_priority_and_rejections(serve: Serve) -> None:
    hold, triage = Hold(), Triage()
    server = serve(held_agent(hold, triage), server={"tenant_header": TENANT},
                   admission={"max_running": 2, "max_queued": 2,
                              "tenants": {"acme": {"max_running": 1, "max_queued": 1}}})
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        a1, a2, a3 = [await open_session(http, "acme") for _ in range(3)]
        b1, b2 = [await open_session(http, "globex") for _ in range(2)]
        c1 = await open_session(http, "initech")
        idle = await stats(http)
        assert idle["running"] == 0 and idle["queued"] == 0
        assert set(idle["rejected"]) == {"server_full", "tenant_quota", "tenant_rate",
                                         "deadline_expired", "cancelled_in_queue"}
        assert idle["limits"]["tenants"]["acme"]["max_running"] == 1

        tasks = [asyncio.create_task(post_turn(http, a1, "hold a", headers=tenant("acme"))),
                 asyncio.create_task(post_turn(http, b1, "hold b", headers=tenant("globex")))]
        await stats_when(http, lambda s: s["running"] == 2, "two running turns")
        tasks.append(asyncio.create_task(post_turn(http, a2, "a later",
                                                   headers=tenant("acme"))))
        tasks.append(asyncio.create_task(post_turn(http, b2, "b later", priority="background",
                                                   headers=tenant("globex"))))
        busy = await stats_when(http, lambda s: s["queued"] == 2, "two queued turns")
        quota = await post_turn(http, a3, "a again", headers=tenant("acme"))
        full = await post_turn(http, c1, "c", headers=tenant("initech"))

        assert_problem(quota, 429, "tenant_overloaded")
        assert_problem(full, 503, "server_overloaded")
        busy = await stats(http)
        assert busy["running"] == 2 and busy["queued"] == 2
        assert busy["running_by_tenant"] == {"acme": 1, "globex": 1}
        assert busy["queued_by_tenant"] == {"acme": 1, "globex": 1}
        assert busy["queued_by_priority"] == {"interactive": 1, "background": 1}
        assert busy["admitted"] == 2
        assert busy["rejected"] == {"server_full": 1, "tenant_quota": 1, "tenant_rate": 0,
                                    "deadline_expired": 0, "cancelled_in_queue": 0}

        hold.release()
        results = await until(asyncio.gather(*tasks))
        assert [r.status_code for r in results] == [200] * 4
        done = await stats(http)
        assert done["running"] == 0 and done["queued"] == 0 and done["admitted"] == 4
        assert done["running_by_tenant"] == {} and done["queued_by_tenant"] == {}
        assert done["rejected"]["server_full"] == 1 and done["rejected"]["tenant_quota"] == 1



async def test_adaptive_limit_and_loop_load_are_in_admin_stats(serve: Serve) -> None:
    hold = Hold()
    server = serve(held_agent(hold, Triage()), server={"tenant_header": TENANT},
                   admission={"max_running": 50, "max_queued": 0, "adaptive": True})
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        # The loop is sampled every 100 ms: wait for a sample, whatever it says.
        body = await stats_when(http, lambda s: s["event_loop"]["busy"] > 0, "a load sample")
        assert 0 < body["event_loop"]["busy"] <= 1 and body["event_loop"]["lag_s"] >= 0
        assert body["limits"]["running_limit"] <= 20  # starts at 20 (lower if start-up lagged)
        # 30 turns that hold their slots, each retried while refused: the limit is what holds
        # them back and the loop is idle, so it grows until all 30 run.
        sessions = [await open_session(http, "acme") for _ in range(30)]
        refusals = 0

        async def admitted(session_id: str) -> httpx.Response:
            nonlocal refusals
            while True:
                response = await post_turn(http, session_id, "hold", headers=tenant("acme"))
                if response.status_code != 503:
                    return response  # admitted: it answered once released
                refusals += 1
                await asyncio.sleep(0.05)  # gently: a busy loop would cut the limit

        tasks = [asyncio.create_task(admitted(sid)) for sid in sessions]
        grown = await stats_when(http, lambda s: s["running"] == 30, "30 running turns")
        assert 30 <= grown["limits"]["running_limit"] <= 50
        assert refusals > 0  # the limit did hold work back at first
        hold.release()
        results = await until(asyncio.gather(*tasks))
        assert [r.status_code for r in results] == [200] * 30
