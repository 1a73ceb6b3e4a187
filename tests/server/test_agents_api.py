"""`/v1/agents`: what is served (tools with schemas, model, limits, policies) and lifecycle."""

from __future__ import annotations

import httpx

from roost import Agent, Limits, Policies
from roost.testing.scripted import ScriptedModel
from tests.server.conftest import Serve, assert_problem, new_session


def test_list_agents_shows_every_hosted_agent(client: httpx.Client) -> None:
    response = client.get("/v1/agents")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    items = response.json()["items"]
    assert sorted(a["name"] for a in items) == ["calculator", "weather"]
    for agent in items:
        assert agent["model"] == "demo"
        assert agent["state"] == "running"
        assert agent["description"]


def test_get_agent_returns_tools_with_json_schemas(client: httpx.Client) -> None:
    response = client.get("/v1/agents/weather")
    assert response.status_code == 200
    agent = response.json()
    assert agent["name"] == "weather"
    assert agent["description"] == "Answers questions about the current weather in a city."
    [tool] = agent["tools"]
    assert tool["name"] == "get_weather"
    assert tool["description"] == "Current weather for a city."
    parameters = tool["parameters"]
    assert parameters["type"] == "object"
    assert parameters["required"] == ["city"]
    assert parameters["additionalProperties"] is False
    assert parameters["properties"]["city"]["type"] == "string"
    assert "Paris" in parameters["properties"]["city"]["description"]
    assert parameters["properties"]["unit"]["enum"] == ["C", "F"]
    assert parameters["properties"]["unit"]["default"] == "C"

    calculator = client.get("/v1/agents/calculator").json()
    assert [t["name"] for t in calculator["tools"]] == [
        "add", "multiply", "square_root", "convert_length"]


def test_get_agent_reports_model_limits_and_policies(serve: Serve) -> None:
    agent = Agent(name="tuned", model=ScriptedModel(["ok"], name="scripted-v1"),
                  description="A tuned agent.",
                  limits=Limits(max_steps=3, run_timeout_s=12.5, max_tool_concurrency=2,
                                tool_timeout_s=4.0, max_input_chars=500),
                  policies=Policies(double_texting="reject", on_disconnect="continue",
                                    history_messages=6))
    server = serve(agent)
    with httpx.Client(base_url=server.url) as http:
        body = http.get("/v1/agents/tuned").json()
    assert body["model"] == "scripted-v1"
    assert body["tools"] == []
    assert body["limits"] == {"max_steps": 3, "run_timeout_s": 12.5, "max_tool_concurrency": 2,
                              "tool_timeout_s": 4.0, "tool_threads": 4, "max_input_chars": 500,
                              "max_cost": None, "max_tokens": None, "max_tool_calls": None,
                              "max_duration_s": None}
    assert body["policies"]["approval"] is None
    assert body["policies"]["double_texting"] == "reject"
    assert body["policies"]["on_disconnect"] == "continue"
    assert body["policies"]["history_messages"] == 6


def test_config_overrides_an_agents_limits(serve: Serve) -> None:
    agent = Agent(name="tuned", model=ScriptedModel(["ok"]))
    server = serve(agent, agents={"tuned": {"limits": {"max_steps": 2},
                                            "policies": {"double_texting": "interrupt"}}})
    with httpx.Client(base_url=server.url) as http:
        body = http.get("/v1/agents/tuned").json()
    assert body["limits"]["max_steps"] == 2
    assert body["policies"]["double_texting"] == "interrupt"


def test_unknown_agent_is_404(client: httpx.Client) -> None:
    body = assert_problem(client.get("/v1/agents/nope"), 404, "agent_not_found")
    assert "nope" in body["detail"]
    assert_problem(client.post("/v1/agents/nope/sessions", json={}), 404, "agent_not_found")
    assert_problem(client.post("/v1/agents/nope/pause"), 404, "agent_not_found")


def test_pause_rejects_new_turns_and_resume_admits_them(serve: Serve) -> None:
    with httpx.Client(base_url=serve().url) as client:
        session = new_session(client, "weather")
        paused = client.post("/v1/agents/weather/pause")
        assert paused.status_code == 200
        assert paused.json()["state"] == "paused"
        refused = client.post(f"/v1/sessions/{session['id']}/turns",
                              json={"input": "weather in Oslo"})
        body = assert_problem(refused, 503, "agent_unavailable")
        assert "paused" in body["detail"]
        assert refused.headers["Retry-After"] == "5"
        # Sessions are kept while paused, and nothing of the refused turn was written.
        assert client.get(f"/v1/sessions/{session['id']}").json()["last_seq"] == 0

        assert client.post("/v1/agents/weather/resume").json()["state"] == "running"
        turn = client.post(f"/v1/sessions/{session['id']}/turns",
                           json={"input": "weather in Oslo"})
        assert turn.json()["status"] == "completed"


def test_a_stopped_agent_stays_stopped(serve: Serve) -> None:
    with httpx.Client(base_url=serve().url) as client:
        session = new_session(client, "calculator")
        assert client.post("/v1/agents/calculator/stop").json()["state"] == "stopped"
        refused = client.post(f"/v1/sessions/{session['id']}/turns", json={"input": "add 1 and 2"})
        assert_problem(refused, 503, "agent_unavailable")
        assert_problem(client.post("/v1/agents/calculator/resume"), 409, "conflict")
        # The other agent is unaffected.
        other = new_session(client, "weather")
        turn = client.post(f"/v1/sessions/{other['id']}/turns", json={"input": "weather in Rome"})
        assert turn.json()["status"] == "completed"
