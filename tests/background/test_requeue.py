"""A run claimed from the queue by an instance that died before starting it goes back to
the queue through the fleet's ordinary takeover, and then runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from roost import Agent
from roost.config import Settings
from roost.runtime.runtime import Runtime


async def wait_for_status(runtime: Runtime, run_id: str, status: str) -> None:
    """The store has no event to await: poll the record."""
    async with asyncio.timeout(10):
        while True:
            if (await runtime.store.get_run("default", run_id)).status == status:
                return
            await asyncio.sleep(0.02)


async def test_a_claimed_unstarted_run_is_requeued_by_takeover(tmp_path: Path) -> None:
    settings = Settings(store={"url": f"sqlite:///{tmp_path}/roost.db"},
                        runtime={"takeover_interval_s": 0.05},
                        background={"worker": False, "scheduler": False})
    runtime = Runtime(settings, [Agent(name="echo", model="demo")])
    await runtime.start()
    try:
        session = await runtime.create_session("default", "echo")
        run = await runtime.background.submit("default", session.id, "hello")
        # An instance that claims it and dies at once: its lease lapses unrenewed.
        (claimed,) = await runtime.background.queue.claim("roost_dead", 0.1, 10)
        assert claimed.id == run.id and claimed.owner == "roost_dead"
        await wait_for_status(runtime, run.id, "queued")
        back = await runtime.store.get_run("default", run.id)
        assert back.owner is None and back.lease_expires_at is None
        assert await runtime.background.queue.depth() == 1
        assert await runtime.background.claim_and_start() == (1, 32)
        await wait_for_status(runtime, run.id, "completed")
    finally:
        await runtime.close()
