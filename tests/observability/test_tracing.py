"""Tracing plumbing: lean spans behave as the SDK's, OTLP bytes match the stock encoder's,
export over OTLP/HTTP from OTEL_* env vars, sampling, W3C parsing."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from roost.observability import Observability, ObservabilityConfig, tracing
from roost.observability.tracing import (
    ApiTracer,
    LeanSpan,
    LeanTracer,
    encode_otlp,
    remote_parent,
    span_starter,
    trace_id_of,
)
from tests.observability import by_name, make_request, make_response, make_run, one_turn

REMOTE = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True,
                     TraceFlags(1), TraceState([("vendor", "abc")]))


class Collector(ThreadingHTTPServer):
    """A minimal OTLP/HTTP trace receiver."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), CollectorHandler)
        self.requests: list[tuple[str, ExportTraceServiceRequest]] = []


class CollectorHandler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.requests.append((self.path, request))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def provider_with_exporter(**kwargs: Any) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(**kwargs)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def lean(provider: TracerProvider, name: str = "roost") -> LeanTracer:
    starter = span_starter(provider.get_tracer(name, "1.2.3"))
    assert isinstance(starter, LeanTracer)
    return starter


# -- export ---------------------------------------------------------------------------------------

async def test_spans_are_exported_over_otlp_and_flushed_at_shutdown(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT",
                       f"http://127.0.0.1:{collector.server_address[1]}")
    # Long enough that only shutdown's flush can have sent them.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")

    def stock_encoding(spans: Sequence[ReadableSpan]) -> None:
        raise AssertionError("the stock encoder ran: Roost's fast path was not taken")

    monkeypatch.setattr("opentelemetry.exporter.otlp.proto.http.trace_exporter.encode_spans",
                        stock_encoding)
    obs = Observability(ObservabilityConfig(tracing=True, service_name="roost-test",
                                            run_log=False))
    one_turn(obs, make_run())
    assert collector.requests == []
    await obs.shutdown()

    paths = {path for path, _ in collector.requests}
    assert paths == {"/v1/traces"}
    spans = {}
    services = set()
    for _, request in collector.requests:
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                assert scope_spans.scope.name == "roost"
                spans.update({span.name: span for span in scope_spans.spans})
    assert services == {"roost-test"}
    assert sorted(spans) == ["chat gpt-4o-mini", "execute_tool search", "invoke_agent support"]
    chat = spans["chat gpt-4o-mini"]
    attributes = {a.key: a.value for a in chat.attributes}
    assert attributes["gen_ai.request.model"].string_value == "gpt-4o-mini"
    assert attributes["gen_ai.usage.input_tokens"].int_value == 1000
    assert [v.string_value for v in attributes["gen_ai.response.finish_reasons"].array_value
            .values] == ["stop"]
    assert chat.parent_span_id == spans["invoke_agent support"].span_id
    assert chat.kind == 3  # SPAN_KIND_CLIENT


def varied_spans() -> list[ReadableSpan]:
    """Spans of every shape, from the SDK's tracer and from a `LeanTracer`."""
    provider, exporter = provider_with_exporter(
        resource=Resource.create({"service.name": "roost", "deployment": "eu-1"},
                                 schema_url="https://opentelemetry.io/schemas/1.21.0"))
    sdk = provider.get_tracer("sdk-scope", "0.1", schema_url="https://example.com/schema",
                              attributes={"scope.attr": True})
    fast = lean(provider)
    values: dict[str, Any] = {
        "str": "value", "empty": "", "unicode": "héllo ✓", "long": "x" * 300, "true": True,
        "false": False, "zero": 0, "small": 7, "big": 2**40, "negative": -5, "min": -(2**63),
        "float": 0.25, "float_zero": 0.0, "strings": ("a", "b"), "ints": (1, -2, 300),
        "mixed_list": ["x", 1, 2.5, True], "bytes": b"\x00\xff",
    }

    def start(use_sdk: bool, name: str, kind: SpanKind, attributes: dict[str, Any] | None,
              parent: trace.Span) -> trace.Span:
        if use_sdk:
            return sdk.start_span(name, context=trace.set_span_in_context(parent), kind=kind,
                                  attributes=dict(attributes or {}))
        return fast.start(name, kind, dict(attributes or {}), parent)

    for use_sdk in (True, False):
        root = start(use_sdk, "POST /v1/sessions/{session_id}/turns", SpanKind.SERVER, values,
                     NonRecordingSpan(REMOTE))
        child = start(use_sdk, "chat gpt-4o-mini", SpanKind.CLIENT,
                      {"gen_ai.operation.name": "chat"}, root)
        child.set_attribute("gen_ai.usage.input_tokens", 1000)
        child.add_event("first token", {"delay_s": 0.1, "tags": ("a",)})
        child.add_link(REMOTE, {"link.kind": "follows"})
        child.add_link(root.get_span_context())
        child.set_status(Status(StatusCode.ERROR, "upstream 503 ✗"))
        child.end()
        for kind in SpanKind:
            leaf = start(use_sdk, f"leaf {kind.name}", kind, None, child)
            leaf.set_status(StatusCode.OK)
            leaf.end()
        root.end()
    spans = list(exporter.get_finished_spans())
    assert {type(s) for s in spans} == {ReadableSpan, LeanSpan}
    return spans


def test_encode_otlp_writes_the_stock_encoders_bytes() -> None:
    spans = varied_spans()
    encoded = encode_otlp(spans)
    assert encoded == encode_spans(spans).SerializeToString()
    request = ExportTraceServiceRequest()
    request.ParseFromString(encoded)
    assert sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans) == len(spans)
    # The caches must not change the output.
    assert encode_otlp(spans) == encoded


def test_encode_otlp_caches_never_change_its_output() -> None:
    provider, exporter = provider_with_exporter()
    starter = lean(provider)
    for i in range(100):  # ids: a new value each time; models: a few, over and over
        starter.start(f"chat m{i % 3}", SpanKind.CLIENT, {
            "gen_ai.request.model": f"m{i % 3}", "roost.run_id": f"run-{i}",
            "url.path": "/x" * (i % 80)}).end()
    spans = exporter.get_finished_spans()
    for start in range(0, 100, 25):
        batch = spans[start:start + 25]
        assert encode_otlp(batch) == encode_spans(batch).SerializeToString()


def test_an_attribute_the_encoder_cannot_write_is_dropped_not_the_batch(
        caplog: pytest.LogCaptureFixture) -> None:
    provider, exporter = provider_with_exporter()
    span = lean(provider).start("s", SpanKind.INTERNAL, {"ok": 1, "huge": 2**70})
    span.end()
    with caplog.at_level(logging.WARNING, logger="roost.observability"):
        encoded = encode_otlp(exporter.get_finished_spans())
    request = ExportTraceServiceRequest()
    request.ParseFromString(encoded)
    (decoded,) = request.resource_spans[0].scope_spans[0].spans
    assert [a.key for a in decoded.attributes] == ["ok"]
    assert "huge" in caplog.text


# -- lean spans behave as the SDK's ---------------------------------------------------------------

def summary(span: ReadableSpan) -> dict[str, Any]:
    """What an exporter sees of a span, minus ids and times."""
    return {
        "name": span.name, "kind": span.kind, "attributes": dict(span.attributes or {}),
        "dropped_attributes": span.dropped_attributes,
        "events": [(e.name, dict(e.attributes or {})) for e in span.events],
        "links": [(link.context, dict(link.attributes or {})) for link in span.links],
        "dropped_events": span.dropped_events, "dropped_links": span.dropped_links,
        "status": (span.status.status_code, span.status.description),
        "parent": span.parent, "flags": span.context.trace_flags if span.context else None,
        "trace_state": span.context.trace_state if span.context else None,
        "resource": span.resource, "scope": span.instrumentation_scope,
    }


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


def exercise(span: trace.Span) -> None:
    """Everything instrumentation code may do with the current span."""
    span.set_attribute("list", ["a", "b"])
    span.set_attribute("object", Opaque())  # type: ignore[arg-type]
    span.set_attribute("", "no key")
    span.set_attributes({"n": 1, "long": "abcdefgh", "f": 1.5})
    span.set_attribute("n", 2)  # replaced, not added
    span.update_name("renamed")
    span.add_event("retry", {"attempt": 2})
    span.add_event("retry", {"attempt": 3})
    span.add_event("dropped", {"attempt": 4})
    span.add_link(REMOTE, {"why": "batch"})
    span.add_link(SpanContext(0, 0, False))  # invalid, no attributes: ignored
    try:
        raise ValueError("bad input")
    except ValueError as exc:
        span.record_exception(exc, {"extra": True})
    span.set_status(Status(StatusCode.OK))
    span.set_status(Status(StatusCode.ERROR, "ignored: OK is final"))
    span.end()
    span.end()  # a second end changes nothing and exports nothing
    span.set_attribute("late", 1)
    span.update_name("too late")
    span.add_event("too late")


def test_a_lean_span_records_what_the_sdk_span_records() -> None:
    limits = SpanLimits(max_span_attributes=6, max_span_attribute_length=4, max_events=2)
    provider, exporter = provider_with_exporter(span_limits=limits)
    parent = NonRecordingSpan(REMOTE)
    attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "count": 3}
    sdk_span = provider.get_tracer("roost", "1.2.3").start_span(
        "chat", context=trace.set_span_in_context(parent), kind=SpanKind.CLIENT,
        attributes=dict(attributes))
    exercise(sdk_span)
    lean_span = lean(provider).start("chat", SpanKind.CLIENT, dict(attributes), parent)
    assert isinstance(lean_span, LeanSpan)
    exercise(lean_span)

    expected, got = exporter.get_finished_spans()
    assert type(got) is LeanSpan
    assert summary(got) == summary(expected)
    assert json.loads(got.to_json()).keys() == json.loads(expected.to_json()).keys()
    assert got.attributes is not None and got.attributes["object"] == "opaque!"
    assert got.attributes["long"] == "abcd"  # max_span_attribute_length
    assert got.dropped_attributes == expected.dropped_attributes > 0
    assert got.events[-1].attributes is not None
    assert got.events[-1].attributes["exception.type"] == "ValueError"
    assert got.context is not None and expected.context is not None
    assert got.context.trace_id == REMOTE.trace_id and got.parent == REMOTE
    assert got.start_time is not None and got.end_time is not None
    assert got.start_time <= got.end_time


def test_a_lean_span_used_as_a_context_manager_records_the_exception() -> None:
    provider, exporter = provider_with_exporter()
    with pytest.raises(KeyError), lean(provider).start("op", SpanKind.INTERNAL, {}):
        raise KeyError("k")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def test_processors_see_each_span_start_once_and_end_once() -> None:
    provider, exporter = provider_with_exporter()
    seen: list[tuple[str, str]] = []

    class Watcher(SimpleSpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            seen.append(("start", span.name))

        def on_end(self, span: ReadableSpan) -> None:
            seen.append(("end", span.name))

    starter = lean(provider)
    early = starter.start("early", SpanKind.INTERNAL, {})
    provider.add_span_processor(Watcher(InMemorySpanExporter()))  # as the SDK: seen from now
    span = starter.start("op", SpanKind.INTERNAL, {})
    span.end()
    span.end()
    early.end()
    assert seen == [("start", "op"), ("end", "op"), ("end", "early")]
    assert [s.name for s in exporter.get_finished_spans()] == ["op", "early"]


def test_user_code_inside_a_tool_adds_to_and_nests_under_its_span() -> None:
    provider, exporter = provider_with_exporter()
    obs = Observability(ObservabilityConfig(run_log=False), tracer_provider=provider)
    other, other_exporter = provider_with_exporter()  # e.g. the app's own global provider
    run = make_run()
    token = obs.hooks.run_start(run, model="demo")
    tool = obs.hooks.tool_start(run, "search", "c1")
    trace.get_current_span().set_attribute("search.results", 3)
    other.get_tracer("app").start_span("http GET").end()
    obs.hooks.tool_end(tool, "ok", None)
    run.status = "completed"
    obs.hooks.run_end(token, run)

    spans = by_name(exporter.get_finished_spans())
    tool_span = spans["execute_tool search"]
    assert tool_span.attributes is not None and tool_span.attributes["search.results"] == 3
    (inner,) = other_exporter.get_finished_spans()
    assert inner.parent is not None and tool_span.context is not None
    assert inner.parent.span_id == tool_span.context.span_id


def test_any_other_tracer_goes_through_the_api() -> None:
    assert span_starter(None) is None
    starter = span_starter(trace.NoOpTracerProvider().get_tracer("x"))
    assert isinstance(starter, ApiTracer)
    span = starter.start("op", SpanKind.INTERNAL, {}, NonRecordingSpan(REMOTE))
    assert not span.is_recording()
    assert span.get_span_context() == REMOTE  # the API's no-op tracer passes the parent on
    obs = Observability(ObservabilityConfig(run_log=False),
                        tracer_provider=trace.NoOpTracerProvider())
    request = make_request()
    run = make_run()
    token = obs.hooks.run_start(run, model="demo")
    call = obs.hooks.model_start(run, "demo", request)
    obs.hooks.model_end(call, make_response(), None)
    run.status = "completed"
    obs.hooks.run_end(token, run)
    assert obs.hooks.active_runs == 0


def test_a_disabled_sdk_records_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    provider, exporter = provider_with_exporter()
    obs = Observability(ObservabilityConfig(run_log=False), tracer_provider=provider)
    one_turn(obs, make_run())
    assert exporter.get_finished_spans() == ()


# -- sampling -------------------------------------------------------------------------------------

def test_the_standard_sampler_env_vars_sample_whole_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    provider, exporter = provider_with_exporter()
    obs = Observability(ObservabilityConfig(run_log=False), tracer_provider=provider)
    headers = []
    for i in range(200):
        run = make_run(f"run-{i}")
        hooks = obs.hooks
        token = hooks.run_start(run, model="demo")
        request = make_request()
        call = hooks.model_start(run, "demo", request)
        hooks.model_end(call, make_response(), None)
        tool = hooks.tool_start(run, "search", "c1")
        hooks.tool_end(tool, "ok", None)
        run.status = "completed"
        hooks.run_end(token, run)
        headers.append(request.metadata["traceparent"])

    by_trace: dict[int, list[str]] = {}
    for span in exporter.get_finished_spans():
        assert span.context is not None
        by_trace.setdefault(span.context.trace_id, []).append(span.name)
    # Some runs were kept, some not, and a kept run is kept whole.
    assert 40 < len(by_trace) < 160
    assert all(sorted(names) == ["chat demo", "execute_tool search", "invoke_agent support"]
               for names in by_trace.values())
    # The decision travels upstream: the sampled flag is set exactly for the kept runs
    # (0x02, W3C level 2's "random trace id", is set on all: the SDK's ids are random).
    flags = [int(h.split("-")[3], 16) for h in headers]
    assert all(f & 0x02 for f in flags)
    sampled = {int(h.split("-")[1], 16) for h, f in zip(headers, flags, strict=True) if f & 1}
    assert sampled == set(by_trace)


def test_a_remote_parent_decides_under_parentbased(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")  # no root of ours is ever kept
    provider, exporter = provider_with_exporter()
    starter = lean(provider)
    kept = starter.start("server", SpanKind.SERVER, {}, NonRecordingSpan(REMOTE))
    assert isinstance(kept, LeanSpan)
    assert kept.get_span_context().trace_state == REMOTE.trace_state
    starter.start("child", SpanKind.INTERNAL, {}, kept).end()
    kept.end()
    not_sampled = SpanContext(REMOTE.trace_id, REMOTE.span_id, True, TraceFlags(0))
    dropped = starter.start("server", SpanKind.SERVER, {}, NonRecordingSpan(not_sampled))
    assert not dropped.is_recording()
    assert dropped.get_span_context().is_valid  # still propagated, as not sampled
    assert not starter.start("root", SpanKind.SERVER, {}, INVALID_SPAN).is_recording()
    assert [s.name for s in exporter.get_finished_spans()] == ["child", "server"]


def test_a_custom_sampler_is_asked_for_every_span() -> None:
    asked: list[tuple[str, bool]] = []

    class EveryOther(Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str,
                          kind: Any = None, attributes: Any = None, links: Any = None,
                          trace_state: Any = None) -> SamplingResult:
            parent = trace.get_current_span(parent_context).get_span_context()
            asked.append((name, parent.is_valid))
            keep = len(asked) % 2 == 1
            return SamplingResult(Decision.RECORD_AND_SAMPLE if keep else Decision.DROP,
                                  {**(attributes or {}), "sampled.by": "custom"} if keep
                                  else None)

        def get_description(self) -> str:
            return "EveryOther"

    provider, exporter = provider_with_exporter(sampler=EveryOther())
    starter = lean(provider)
    root = starter.start("root", SpanKind.INTERNAL, {"a": 1})
    child = starter.start("child", SpanKind.INTERNAL, {}, root)
    assert not child.is_recording()
    root.end()
    assert asked == [("root", False), ("child", True)]
    (span,) = exporter.get_finished_spans()
    assert span.attributes == {"a": 1, "sampled.by": "custom"}


# -- propagation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("traceparent", [
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    " \t00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03 ",
    "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" + "-" * 600,
    "",
    "garbage",
])
@pytest.mark.parametrize("tracestate", [None, "vendor=abc,other=1", "x" * 600])
def test_remote_parent_reads_headers_as_the_w3c_propagator(
        traceparent: str, tracestate: str | None) -> None:
    carrier = {"traceparent": traceparent}
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    expected = trace.get_current_span(tracing.extract(carrier)).get_span_context()
    assert remote_parent(traceparent, tracestate).get_span_context() == expected


def test_trace_id_of_validates_traceparent() -> None:
    assert trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == (
        "4bf92f3577b34da6a3ce929d0e0e4736")
    assert trace_id_of(" 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01 ") == (
        "4bf92f3577b34da6a3ce929d0e0e4736")
    for bad in ("", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"):
        assert trace_id_of(bad) is None
