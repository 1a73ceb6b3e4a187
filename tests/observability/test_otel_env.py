"""The standard OpenTelemetry variables work as in any instrumented service."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from roost.errors import ConfigError
from roost.observability import Observability, ObservabilityConfig
from roost.observability.tracing import build_tracer_provider


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME",
                 "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)


def exporters(provider: Any) -> list[str]:
    processors = provider._active_span_processor._span_processors
    names = [type(p.span_exporter).__name__ for p in processors]
    for p in processors:
        p.shutdown()
    return names


@pytest.mark.parametrize(("value", "expected"), [
    (None, ["OTLPSpanExporter"]),
    ("otlp", ["OTLPSpanExporter"]),
    ("console", [ConsoleSpanExporter.__name__]),
    ("otlp,console", ["OTLPSpanExporter", ConsoleSpanExporter.__name__]),
    ("none", []),
])
def test_otel_traces_exporter(monkeypatch: pytest.MonkeyPatch, value: str | None,
                              expected: list[str]) -> None:
    if value is not None:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", value)
    assert exporters(build_tracer_provider("roost")) == expected


def test_an_unknown_exporter_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigError, match="zipkin"):
        build_tracer_provider("roost")


@pytest.mark.parametrize(("env", "service", "extra"), [
    ({}, "roost", {}),
    ({"OTEL_SERVICE_NAME": "agents-eu"}, "agents-eu", {}),
    ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,deployment.environment=prod"},
     "from-attrs", {"deployment.environment": "prod"}),
    ({"OTEL_SERVICE_NAME": "wins", "OTEL_RESOURCE_ATTRIBUTES": "service.name=loses,team=ai"},
     "wins", {"team": "ai"}),
])
def test_service_name_and_resource_attributes(monkeypatch: pytest.MonkeyPatch,
                                              env: dict[str, str], service: str,
                                              extra: dict[str, str]) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    attributes = build_tracer_provider("roost", "1.2.3").resource.attributes
    assert attributes["service.name"] == service
    assert attributes["service.version"] == "1.2.3"
    assert extra.items() <= dict(attributes).items()


def test_otel_sdk_disabled_turns_tracing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    obs = Observability(ObservabilityConfig(tracing=True, metrics=False))
    assert obs.tracer_provider is None and obs.tracer is None
