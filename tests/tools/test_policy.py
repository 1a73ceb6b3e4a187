"""Tool policies: per-tool concurrency and rate limits, per-tenant allow and deny lists."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from roost import Agent, Runtime, Settings, tool
from roost.errors import ConfigError
from roost.models.base import ToolSpec
from roost.sessions.records import Event, RunRecord
from roost.tools import ToolContext
from roost.tools.policy import LimitedTool, ToolPolicies, ToolRefused

running = 0
peak = 0
release = asyncio.Event()


@tool
async def crawl(url: str) -> str:
    """Fetch a page.

    Args:
        url: The page.
    """
    global running, peak
    running += 1
    peak = max(peak, running)
    try:
        await release.wait()
    finally:
        running -= 1
    return f"page {url}"


@tool
def lookup(word: str) -> str:
    """Look a word up in the dictionary.

    Args:
        word: The word.
    """
    return f"{word}: a word"


def context(loop_deadline: float | None = None, call: str = "c1") -> ToolContext:
    return ToolContext(run_id="run_1", session_id="s", tenant="t", agent="a", call_id=call,
                       deadline=loop_deadline)


async def test_concurrency_limit_holds_across_agents_copies() -> None:
    global release, peak
    release = asyncio.Event()
    peak = 0
    policies = ToolPolicies.from_config({"limits": {"crawl": {"max_concurrency": 2}}})
    # Two agents' tables: the limit is per tool name, shared.
    first = policies.limit_tools([crawl])["crawl"]
    second = policies.limit_tools([crawl])["crawl"]
    assert isinstance(first, LimitedTool) and first.limiter is second.limiter  # type: ignore[attr-defined]
    calls = [asyncio.create_task((first if i % 2 else second).call('{"url": "u"}',
                                                                      context(call=str(i))))
             for i in range(5)]
    stats = policies.statistics()["crawl"]
    for _ in range(50):
        await asyncio.sleep(0)
        stats = policies.statistics()["crawl"]
        if stats["running"] == 2 and stats["waiting"] == 3:
            break
    assert (stats["running"], stats["waiting"]) == (2, 3)
    release.set()
    assert await asyncio.gather(*calls) == ["page u"] * 5
    assert peak == 2
    assert policies.statistics()["crawl"] == {"running": 0, "waiting": 0, "calls": 5,
                                              "refused": 0}


async def test_rate_limit_waits_within_the_deadline_and_refuses_past_it() -> None:
    policies = ToolPolicies.from_config({"limits": {"lookup": {"rate": 20, "burst": 1}}})
    limited = policies.limit_tools([lookup])["lookup"]
    loop = asyncio.get_running_loop()
    assert await limited.call('{"word": "a"}', context(loop.time() + 5)) == "a: a word"
    started = loop.time()
    # The bucket is empty: the next call waits ~50 ms for a token, inside its deadline.
    assert await limited.call('{"word": "b"}', context(loop.time() + 5)) == "b: a word"
    assert loop.time() - started >= 0.03
    # Empty again, and the deadline is nearer than the next token: refused at once.
    with pytest.raises(ToolRefused, match="rate limited"):
        await limited.call('{"word": "c"}', context(loop.time() + 0.001))
    assert policies.statistics()["lookup"]["refused"] == 1


def test_tenant_lists_filter_tools_and_specs() -> None:
    policies = ToolPolicies.from_config({"tenants": {
        "acme": {"deny": ["crawl"]},
        "trial": {"allow": ["lookup", "crawl"], "deny": ["crawl"]},
        "none": {"allow": []}}})
    tools = policies.limit_tools([crawl, lookup])
    specs = [ToolSpec(name=n, description="", parameters={}) for n in tools]
    assert policies.for_tenant("other", tools, specs) == (tools, specs)  # unchanged: no copy
    kept, kept_specs = policies.for_tenant("acme", tools, specs)
    assert list(kept) == ["lookup"] and [s.name for s in kept_specs] == ["lookup"]
    assert policies.for_tenant("acme", tools, specs)[0] is kept  # cached per table
    assert list(policies.for_tenant("trial", tools, specs)[0]) == ["lookup"]  # deny wins
    assert policies.for_tenant("none", tools, specs) == ({}, [])


@pytest.mark.parametrize(("table", "where"), [
    ({"limit": {}}, "tool_policies"),
    ({"limits": {"x": {"max_concurrency": 0}}}, "tool_policies.limits.x"),
    ({"limits": {"x": {"burst": 3}}}, "tool_policies.limits.x"),
    ({"limits": {"x": {"rate": -1}}}, "tool_policies.limits.x"),
    ({"tenants": {"acme": {"denied": ["x"]}}}, "tool_policies.tenants.acme"),
])
def test_bad_config_names_the_key(table: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ToolPolicies.from_config(table)
    assert raised.value.problems[0][0] == where


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    agent = Agent(name="dictionary", model="demo", tools=[lookup])
    rt = Runtime(Settings(store={"url": "memory://"},
                          tool_policies={"tenants": {"acme": {"deny": ["lookup"]}}}), [agent])
    await rt.start()
    yield rt
    await rt.close()


async def ask(rt: Runtime, tenant: str, text: str) -> tuple[RunRecord, list[Event]]:
    session = await rt.create_session(tenant, "dictionary")
    run = await (await rt.submit_turn(tenant, session.id, text)).wait()
    return run, await rt.store.read_events(tenant, session.id, limit=100)


async def test_a_denied_tool_is_not_offered_to_that_tenant(runtime: Runtime) -> None:
    run, events = await ask(runtime, "default", "lookup the word hello")
    assert run.status == "completed"
    assert [e.data["name"] for e in events if e.type == "tool.call"] == ["lookup"]
    run, events = await ask(runtime, "acme", "lookup the word hello")
    assert run.status == "completed"
    assert [e for e in events if e.type == "tool.call"] == []
