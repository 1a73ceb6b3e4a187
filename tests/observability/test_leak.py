"""10,000 runs with tracing on: every span ends, and nothing accumulates."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time

import psutil
import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

from roost.errors import ModelError
from roost.observability import Observability, ObservabilityConfig
from roost.observability.logs import current_context
from roost.observability.tracing import LeanSpan
from tests.observability import make_request, make_response, make_run, one_turn, scrape, value


class CountingProcessor(SpanProcessor):
    """Counts spans started and ended, and keeps none of them."""

    def __init__(self) -> None:
        self.started = 0
        self.ended = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.started += 1

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1


async def varied_run(obs: Observability, i: int) -> None:
    """One run along one of the paths the engine can take."""
    run = make_run(f"run-{i}", session_id=f"sess-{i}")
    hooks = obs.hooks
    if i % 10 == 0:  # the model fails
        token = hooks.run_start(run, model="openai:gpt-4o")
        call = hooks.model_start(run, "openai:gpt-4o", make_request())
        hooks.model_end(call, None, ModelError("boom", kind="overloaded"))
        run.status = "failed"
        hooks.run_end(token, run)
    elif i % 10 == 1:  # cancelled mid-call: model_end never comes
        token = hooks.run_start(run, model="openai:gpt-4o")
        hooks.model_start(run, "openai:gpt-4o", make_request())
        run.status = "cancelled"
        hooks.run_end(token, run)
    elif i % 10 == 2:  # two tools in their own tasks, one times out
        token = hooks.run_start(run, model="openai:gpt-4o")

        async def tool(call_id: str, outcome: str) -> None:
            call = hooks.tool_start(run, "search", call_id)
            hooks.tool_end(call, outcome, TimeoutError() if outcome == "timeout" else None)

        await asyncio.gather(tool("a", "ok"), tool("b", "timeout"))
        call = hooks.model_start(run, "openai:gpt-4o", make_request())
        hooks.model_end(call, make_response(), None)
        run.status = "completed"
        hooks.run_end(token, run)
    else:
        one_turn(obs, run)


async def test_ten_thousand_runs_leak_nothing(caplog: pytest.LogCaptureFixture) -> None:
    # pytest keeps every captured record: quiet the expected model-failure warnings.
    caplog.set_level(logging.ERROR, logger="roost.runs")
    processor = CountingProcessor()
    provider = TracerProvider()
    provider.add_span_processor(processor)
    obs = Observability(ObservabilityConfig(run_log=False), tracer_provider=provider)
    process = psutil.Process(os.getpid())

    for i in range(1_000):  # warm up: label children, caches, interned strings
        await varied_run(obs, i)
    gc.collect()
    objects_before = len(gc.get_objects())
    rss_before = process.memory_info().rss
    started = time.perf_counter()

    for i in range(1_000, 11_000):
        await varied_run(obs, i)

    elapsed = time.perf_counter() - started
    gc.collect()
    objects_after = len(gc.get_objects())
    rss_after = process.memory_info().rss
    print(f"\n10,000 runs in {elapsed:.2f}s; gc objects {objects_before} -> {objects_after}; "
          f"RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB")

    assert processor.started == processor.ended  # every span ended, on every path
    assert processor.started == 11_000 // 10 * (2 + 2 + 4 + 7 * 4)
    assert obs.hooks.active_runs == 0
    assert dict(current_context()) == {}
    assert objects_after - objects_before < 500
    assert rss_after - rss_before < 8 * 2**20
    assert value(scrape(obs), "roost_runs_in_flight") == 0
    assert value(scrape(obs), "roost_runs_total", agent="support", outcome="completed") == 8_800


def test_tracing_off_runs_create_no_span_objects() -> None:
    def spans() -> set[int]:
        gc.collect()
        return {id(o) for o in gc.get_objects() if isinstance(o, Span | LeanSpan)}

    obs = Observability(ObservabilityConfig(run_log=False))
    # Earlier tests' providers live until exit (the SDK registers them with atexit), their
    # in-memory exporters holding finished spans: only new spans count.
    before = spans()
    for i in range(200):
        one_turn(obs, make_run(f"r{i}"))
    assert spans() - before == set()
