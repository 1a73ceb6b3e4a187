"""Tracing config end to end: OTLP/HTTP export from OTEL_* env vars, flushed at shutdown."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from roost.observability import Observability, ObservabilityConfig
from roost.observability.tracing import trace_id_of
from tests.observability import make_run, one_turn


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


async def test_spans_are_exported_over_otlp_and_flushed_at_shutdown(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT",
                       f"http://127.0.0.1:{collector.server_address[1]}")
    # Long enough that only shutdown's flush can have sent them.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    obs = Observability(ObservabilityConfig(tracing=True, service_name="roost-test",
                                            run_log=False))
    one_turn(obs, make_run())
    assert collector.requests == []
    await obs.shutdown()

    paths = {path for path, _ in collector.requests}
    assert paths == {"/v1/traces"}
    names = []
    services = set()
    for _, request in collector.requests:
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                names += [span.name for span in scope_spans.spans]
    assert services == {"roost-test"}
    assert sorted(names) == sorted(["invoke_agent support", "chat gpt-4o-mini",
                                    "chat gpt-4o-mini", "execute_tool search"])


def test_trace_id_of_validates_traceparent() -> None:
    assert trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == (
        "4bf92f3577b34da6a3ce929d0e0e4736")
    assert trace_id_of(" 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01 ") == (
        "4bf92f3577b34da6a3ce929d0e0e4736")
    for bad in ("", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"):
        assert trace_id_of(bad) is None
