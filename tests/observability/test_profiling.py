"""Profiling the live event loop."""

from __future__ import annotations

import asyncio
import json

import pytest

from roost.errors import Conflict, InvalidInput
from roost.observability import Observability, profile


def burn_cpu_in_a_recognisable_function() -> int:
    return sum(i * i for i in range(20_000))


async def busy_tenant(stop: asyncio.Event) -> None:
    while not stop.is_set():
        burn_cpu_in_a_recognisable_function()
        await asyncio.sleep(0.002)  # leave the loop room, like real request handlers


async def test_profile_sees_other_tasks_and_refuses_a_second_caller() -> None:
    stop = asyncio.Event()
    worker = asyncio.create_task(busy_tenant(stop))
    try:
        first = asyncio.create_task(Observability.profile(1.0, interval=0.0005))
        await asyncio.sleep(0.05)
        with pytest.raises(Conflict):
            await profile(1.0)
        report = await first
    finally:
        stop.set()
        await worker
    assert "burn_cpu_in_a_recognisable_function" in report
    # Free again once the first finished.
    speedscope = json.loads(await profile(1.0, format="speedscope"))
    assert "profiles" in speedscope


@pytest.mark.parametrize("seconds", [0, 0.5, 61, -1])
async def test_seconds_are_bounded(seconds: float) -> None:
    with pytest.raises(InvalidInput) as info:
        await profile(seconds)
    assert info.value.field == "seconds"


async def test_bad_interval_and_format() -> None:
    with pytest.raises(InvalidInput):
        await profile(1, interval=1.0)
    with pytest.raises(InvalidInput):
        await profile(1, format="pdf")  # type: ignore[arg-type,unused-ignore]


async def test_cancelling_stops_the_profiler_cleanly() -> None:
    task = asyncio.create_task(profile(30))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    html = await profile(1, format="html")
    assert "<html" in html.lower()
