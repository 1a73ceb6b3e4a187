"""Drive one `Runner` directly over a memory store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from roost.agent import Agent
from roost.engine.context import events_to_messages
from roost.engine.run import RunContext, Runner
from roost.models.base import Message, ToolSpec
from roost.runtime.live_session import LiveSession
from roost.sessions import Event, RunRecord, Session, open_store
from roost.sessions.store import Store


@dataclass
class Harness:
    store: Store
    emitted: list[Event] = field(default_factory=list)

    async def session(self, agent: Agent) -> Session:
        return await self.store.create_session(Session(id=f"ses_{len(self.emitted)}_{id(agent)}",
                                                       agent=agent.name))

    def context(self, agent: Agent, session: Session, text: str = "hello", *,
                timeout_s: float = 5.0, messages: list[Message] | None = None,
                run: RunRecord | None = None, stream: bool = False, **extra: Any) -> RunContext:
        tools = {t.name: t for t in agent.function_tools()}
        run = run or RunRecord(id=f"run_{len(self.emitted)}_{id(session)}", session_id=session.id,
                               agent=agent.name, input=text)
        return RunContext(
            agent=agent, model=agent.model, tools=tools,  # type: ignore[arg-type]
            tool_specs=[ToolSpec(name=t.name, description=t.description, parameters=t.parameters)
                        for t in tools.values()],
            session=LiveSession(self.store, session, [], agent.policies), run=run,
            messages=list(messages or []),
            deadline=asyncio.get_running_loop().time() + timeout_s,
            emit=self.emitted.append, stream=stream, **extra)

    async def run(self, agent: Agent, text: str = "hello", **kwargs: Any) -> tuple[RunRecord, RunContext]:
        session = await self.session(agent)
        ctx = self.context(agent, session, text, **kwargs)
        record = await Runner(ctx).run()
        return record, ctx

    async def log(self, session_id: str) -> list[Event]:
        return await self.store.read_events("default", session_id, after=0, limit=1000)

    async def conversation(self, session_id: str) -> list[Message]:
        return events_to_messages(await self.log(session_id))


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    store = open_store("memory://")
    await store.open()
    yield Harness(store)
    await store.close()
