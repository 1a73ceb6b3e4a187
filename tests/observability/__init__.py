"""Helpers shared by the observability tests: scraping, span capture, log capture, runs."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from roost.models.base import Message, ModelRequest, ModelResponse
from roost.observability import Observability, ObservabilityConfig, logs
from roost.sessions.records import RunRecord, Usage


def scrape(obs: Observability) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse `metrics_response()`: (sample name, labels) -> value."""
    body, content_type = obs.metrics_response()
    assert content_type.startswith("text/plain")
    return parse(body.decode())


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    """One sample's value (0.0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def traced(config: ObservabilityConfig | None = None) -> tuple[Observability, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Observability(config, tracer_provider=provider), exporter


def by_name(spans: Any) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def make_run(run_id: str = "run-1", *, agent: str = "support", session_id: str = "sess-1",
             tenant: str = "acme") -> RunRecord:
    return RunRecord(id=run_id, session_id=session_id, agent=agent, tenant=tenant,
                     status="running")


def make_request() -> ModelRequest:
    return ModelRequest(messages=[Message(role="user", content="hello")],
                        settings={"temperature": 0.2, "max_tokens": 256})


def make_response(input_tokens: int = 1000, output_tokens: int = 100, model: str = "",
                  finish_reason: str = "stop") -> ModelResponse:
    return ModelResponse(
        message=Message(role="assistant", content="hi"),
        usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
        model=model, finish_reason=finish_reason,
    )


def one_turn(obs: Observability, run: RunRecord, model: str = "openai:gpt-4o-mini") -> None:
    """What the engine does for the reference turn: model -> tool -> model -> answer."""
    hooks = obs.hooks
    token = hooks.run_start(run, model=model)
    for step in range(2):
        request = make_request()
        call = hooks.model_start(run, model, request)
        hooks.model_first_token(call)
        response = make_response()
        hooks.model_end(call, response, None)
        run.usage.add(response.usage)
        if step == 0:
            tool = hooks.tool_start(run, "search", f"call-{run.id}")
            hooks.tool_end(tool, "ok", None)
    run.status = "completed"
    hooks.run_end(token, run)


@contextmanager
def captured_logs(config: ObservabilityConfig | None = None) -> Iterator[io.StringIO]:
    """Configure Roost's logging into a buffer for the block, then undo it."""
    obs = Observability(config or ObservabilityConfig(log_format="json", log_level="debug"))
    buffer = io.StringIO()
    obs.configure_logging(stream=buffer)
    try:
        yield buffer
    finally:
        logs.unconfigure_logging()


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
