"""The record never lies: a run whose end the store did not take is recorded when the
store answers again, and agrees with its log."""

from __future__ import annotations

import asyncio
from typing import Any

from roost import Agent, Runtime, Settings
from roost.errors import StoreUnavailable
from roost.sessions import Event, RunRecord
from roost.sessions.memory import MemoryStore
from roost.testing.scripted import ScriptedModel


class FlakyStore(MemoryStore):
    """Fails every write while `down`; with `lose_ack`, the next final step commits and then
    raises, as when PostgreSQL committed but the reply was lost."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.lose_ack = False

    async def append(self, tenant: str, session_id: str, events: list[Event],
                     expected_version: int, run: Any = None) -> int:
        if self.lose_ack and any(e.type == "run.completed" for e in events):
            self.lose_ack = False
            await super().append(tenant, session_id, events, expected_version, run=run)
            self.down = True  # and the store stays away for a moment
            raise StoreUnavailable("the reply was lost (test)")
        if self.down:
            raise StoreUnavailable("the store is down (test)")
        return await super().append(tenant, session_id, events, expected_version, run=run)

    async def get_session(self, tenant: str, session_id: str) -> Any:
        if self.down:
            raise StoreUnavailable("the store is down (test)")
        return await super().get_session(tenant, session_id)

    async def put_run(self, run: RunRecord) -> None:
        if self.down:
            raise StoreUnavailable("the store is down (test)")
        await super().put_run(run)


async def wait_until(condition: Any, within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        # A condition on the store, which has no event to wait on: poll it, bounded.
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def start(store: FlakyStore) -> Runtime:
    agent = Agent(name="a", model=ScriptedModel(["the answer"], repeat_last=True))
    runtime = Runtime(Settings(store={"url": "memory://"}, runtime={"store_retry_s": 0.05}),
                      [agent], store=store)
    await runtime.start()
    return runtime


async def test_a_completed_run_whose_ack_was_lost_is_recorded_completed() -> None:
    store = FlakyStore()
    runtime = await start(store)
    try:
        session = await runtime.create_session("default", "a")
        store.lose_ack = True
        run = await (await runtime.submit_turn("default", session.id, "hi")).wait()
        assert run.status == "failed"  # what the run could tell while the store was away
        store.down = False

        async def settled() -> bool:
            return runtime.recovery.unsettled() == 0

        await wait_until(settled)
        stored = await store.get_run("default", run.id)
        assert stored.status == "completed" and stored.output == "the answer"
        assert run.status == "completed"  # what GET /v1/runs/{id} answers on this instance too
        log = await store.read_events("default", session.id, limit=100)
        assert [e.type for e in log].count("run.completed") == 1
        assert not [e for e in log if e.type == "run.failed"]
    finally:
        await runtime.close()


async def test_a_run_whose_end_failed_in_an_outage_is_recorded_when_the_store_returns() -> None:
    store = FlakyStore()
    runtime = await start(store)
    try:
        session = await runtime.create_session("default", "a")
        first = await (await runtime.submit_turn("default", session.id, "hi")).wait()
        assert first.status == "completed"
        handle = await runtime.submit_turn("default", session.id, "again")
        store.down = True  # before the run's first append
        run = await handle.wait()
        assert run.status == "failed" and run.error and run.error["type"] == "store_unavailable"
        assert runtime.recovery.unsettled() == 1
        store.down = False

        async def settled() -> bool:
            return runtime.recovery.unsettled() == 0

        await wait_until(settled)
        log = await store.read_events("default", session.id, limit=100)
        # The record agrees with the log: the run is failed in both, its end recorded once.
        ends = [e for e in log if e.run_id == run.id]
        assert [e.type for e in ends] == ["run.failed"]
        assert (await store.get_run("default", run.id)).status == "failed"
    finally:
        await runtime.close()
