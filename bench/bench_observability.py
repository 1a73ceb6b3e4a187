"""CPU cost of observability on the hot path.

    .venv/bin/python bench/bench_observability.py [-n 20000]

Prints CPU microseconds (process time: every thread, the span exporter's included) per unit,
best of 3 rounds:

- per run of the engine hooks for the reference turn (run, model call, tool call, model call),
  with: no hooks (the engine's default), metrics only, metrics + tracing (BatchSpanProcessor
  to an exporter that drops; all spans, then 10% sampled), metrics + tracing with the spans
  OTLP-encoded as the exporter does before sending, metrics + JSON logs (one "run finished"
  line per run, to /dev/null), and everything on;
- per HTTP request through the ASGI middleware around a bare ASGI app, with metrics, with
  metrics + access log, and with metrics + tracing + access log, minus the bare app's cost;
- per store operation through the instrumented wrapper, minus the bare call;
- per span, OTLP protobuf encoding of the reference turn's spans: the stock encoder
  (`opentelemetry-exporter-otlp-proto-common`) and Roost's `encode_otlp`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from roost.engine.hooks import NO_HOOKS, EngineHooks
from roost.models.base import Message, ModelRequest, ModelResponse
from roost.observability import Observability, ObservabilityConfig, logs
from roost.observability.tracing import encode_otlp
from roost.sessions.records import RunRecord, Usage


class DropExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class EncodeExporter(SpanExporter):
    """What the OTLP exporter does before the HTTP request (~1.3 µs per span more)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        encode_otlp(spans)
        return SpanExportResult.SUCCESS


def tracer_provider(ratio: float = 1.0, exporter: SpanExporter | None = None) -> TracerProvider:
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    provider.add_span_processor(BatchSpanProcessor(exporter or DropExporter(),
                                                   max_queue_size=65536))
    return provider


def best_of(rounds: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(rounds))


# -- hooks ----------------------------------------------------------------------------------

def turn(hooks: EngineHooks, i: int) -> None:
    run = RunRecord(id=f"run-{i}", session_id=f"s-{i}", agent="support", tenant="acme",
                    status="running")
    token = hooks.run_start(run, model="openai:gpt-4o-mini")
    for step in range(2):
        request = ModelRequest(messages=[Message(role="user", content="hi")])
        call = hooks.model_start(run, "openai:gpt-4o-mini", request)
        hooks.model_first_token(call)
        response = ModelResponse(message=Message(role="assistant", content="ok"),
                                 usage=Usage(input_tokens=500, output_tokens=50),
                                 model="gpt-4o-mini", finish_reason="stop")
        hooks.model_end(call, response, None)
        run.usage.add(response.usage)
        if step == 0:
            tool = hooks.tool_start(run, "search", f"call-{i}")
            hooks.tool_end(tool, "ok", None)
    run.status = "completed"
    hooks.run_end(token, run)


def records_only(i: int) -> None:
    """The records the turn builds, without hooks: subtracted from every figure."""
    run = RunRecord(id=f"run-{i}", session_id=f"s-{i}", agent="support", tenant="acme",
                    status="running")
    for _ in range(2):
        ModelRequest(messages=[Message(role="user", content="hi")])
        response = ModelResponse(message=Message(role="assistant", content="ok"),
                                 usage=Usage(input_tokens=500, output_tokens=50),
                                 model="gpt-4o-mini", finish_reason="stop")
        run.usage.add(response.usage)


def per_run(fn: Callable[[int], None], n: int) -> float:
    def round_() -> float:
        start = time.process_time()
        for i in range(n):
            fn(i)
        return (time.process_time() - start) / n * 1e6

    return best_of(3, round_)


def bench_hooks(n: int) -> list[tuple[str, float]]:
    prices = {"openai:gpt-4o-mini": {"input": 0.15, "output": 0.6}}
    base = per_run(records_only, n)
    results = [("no hooks (EngineHooks default)", per_run(lambda i: turn(NO_HOOKS, i), n) - base)]

    metrics = Observability(ObservabilityConfig.model_validate({"prices": prices}))
    results.append(("metrics only", per_run(lambda i: turn(metrics.hooks, i), n) - base))

    traced_provider = tracer_provider()
    traced = Observability(ObservabilityConfig.model_validate({"prices": prices}),
                           tracer_provider=traced_provider)
    results.append(("metrics + tracing", per_run(lambda i: turn(traced.hooks, i), n) - base))
    traced_provider.shutdown()

    encoded_provider = tracer_provider(exporter=EncodeExporter())
    encoded = Observability(ObservabilityConfig.model_validate({"prices": prices}),
                            tracer_provider=encoded_provider)
    results.append(("metrics + tracing + OTLP encoding",
                    per_run(lambda i: turn(encoded.hooks, i), n) - base))
    encoded_provider.shutdown()

    sampled_provider = tracer_provider(0.1)
    sampled = Observability(ObservabilityConfig.model_validate({"prices": prices}),
                            tracer_provider=sampled_provider)
    results.append(("metrics + tracing, 10% sampled",
                    per_run(lambda i: turn(sampled.hooks, i), n) - base))
    sampled_provider.shutdown()

    with open(os.devnull, "w") as sink:
        logged = Observability(ObservabilityConfig.model_validate(
            {"prices": prices, "log_format": "json"}))
        logged.configure_logging(stream=sink)
        try:
            results.append(("metrics + JSON logs (1 line/run)",
                            per_run(lambda i: turn(logged.hooks, i), n) - base))
            all_provider = tracer_provider()
            everything = Observability(ObservabilityConfig.model_validate(
                {"prices": prices, "log_format": "json"}), tracer_provider=all_provider)
            results.append(("metrics + tracing + JSON logs",
                            per_run(lambda i: turn(everything.hooks, i), n) - base))
            all_provider.shutdown()
        finally:
            logs.unconfigure_logging()
    return results


# -- middleware -------------------------------------------------------------------------------

async def bare_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


class FakeRoute:
    path = "/v1/sessions/{session_id}"


async def drive(app: Any, n: int) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    headers = [(b"host", b"localhost"), (b"user-agent", b"bench"),
               (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    start = time.process_time()
    for _ in range(n):
        scope = {"type": "http", "method": "GET", "path": "/v1/sessions/abc", "headers": headers,
                 "root_path": "", "scheme": "http", "client": ("127.0.0.1", 1234),
                 "route": FakeRoute()}
        await app(scope, receive, send)
    return (time.process_time() - start) / n * 1e6


def bench_middleware(n: int) -> list[tuple[str, float]]:
    def measure(app: Any) -> float:
        return best_of(3, lambda: asyncio.run(drive(app, n)))

    base = measure(bare_app)
    results = []
    quiet = Observability(ObservabilityConfig(access_log=False))
    results.append(("metrics", measure(quiet.asgi_middleware(bare_app)) - base))
    with open(os.devnull, "w") as sink:
        logged = Observability(ObservabilityConfig(log_format="json"))
        logged.configure_logging(stream=sink)
        try:
            results.append(("metrics + access log",
                            measure(logged.asgi_middleware(bare_app)) - base))
            provider = tracer_provider()
            traced = Observability(ObservabilityConfig(log_format="json"),
                                   tracer_provider=provider)
            results.append(("metrics + tracing + access log",
                            measure(traced.asgi_middleware(bare_app)) - base))
            provider.shutdown()
        finally:
            logs.unconfigure_logging()
    return results


# -- store ------------------------------------------------------------------------------------

class NullStore:
    backend = "memory"

    async def put_run(self, run: RunRecord) -> None:
        return None


def bench_store(n: int) -> list[tuple[str, float]]:
    run = RunRecord(id="r", session_id="s", agent="a")

    async def loop(store: Any) -> float:
        start = time.process_time()
        for _ in range(n):
            await store.put_run(run)
        return (time.process_time() - start) / n * 1e6

    def measure(store: Any) -> float:
        return best_of(3, lambda: asyncio.run(loop(store)))

    base = measure(NullStore())
    metrics = Observability().instrument_store(NullStore())  # type: ignore[arg-type]
    provider = tracer_provider()
    traced = Observability(tracer_provider=provider).instrument_store(NullStore())  # type: ignore[arg-type]
    results = [("metrics", measure(metrics) - base), ("metrics + tracing", measure(traced) - base)]
    provider.shutdown()
    return results


# -- OTLP encoding ----------------------------------------------------------------------------

def bench_encoding(n: int) -> list[tuple[str, float]]:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    obs = Observability(ObservabilityConfig(run_log=False), tracer_provider=provider)
    for i in range(128):  # 512 spans: one batch of the BatchSpanProcessor
        turn(obs.hooks, i)
    spans = memory.get_finished_spans()
    rounds = max(1, n // 2000)

    def per_span(encode: Callable[[], object]) -> float:
        def round_() -> float:
            start = time.process_time()
            for _ in range(rounds):
                encode()
            return (time.process_time() - start) / rounds / len(spans) * 1e6
        return best_of(3, round_)

    return [("stock encoder (protobuf objects)",
             per_span(lambda: encode_spans(spans).SerializePartialToString())),
            ("encode_otlp", per_span(lambda: encode_otlp(spans)))]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=20_000, help="units per round")
    args = parser.parse_args(argv)
    out = io.StringIO()
    sections = [
        ("hooks, CPU µs per run (model + tool + model)", bench_hooks(args.n)),
        ("ASGI middleware, CPU µs per request (over a bare app)", bench_middleware(args.n)),
        ("instrumented store, CPU µs per operation (over the bare call)", bench_store(args.n)),
        ("OTLP protobuf encoding, CPU µs per span (reference turn's spans)",
         bench_encoding(args.n)),
    ]
    for title, rows in sections:
        print(title, file=out)
        for name, micros in rows:
            print(f"  {name:<40} {micros:8.1f}", file=out)
    print(out.getvalue(), end="")


if __name__ == "__main__":
    main()
