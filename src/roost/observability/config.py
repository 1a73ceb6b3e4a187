"""`ObservabilityConfig`: what to measure, where to export, how to log, what tokens cost.

Embedded in Roost's `Settings` as `observability`, so every key is settable from the config
file or `ROOST_OBSERVABILITY__*` env vars:

    [observability]
    metrics_port = 9464          # omit: /metrics on the main app
    tracing = true               # exporter (OTEL_TRACES_EXPORTER), endpoint, sampler, service
                                 # name etc. from the standard OTEL_* variables; off: OTEL_SDK_DISABLED
    trace_store = true           # a span per store call too
    log_format = "json"

    [observability.prices."openai:gpt-4o-mini"]
    input = 0.15                 # USD per 1M input tokens
    output = 0.60

Tracing every turn costs about 0.1 ms of CPU on the reference turn (~7%; twice that with
`trace_store`). A sampled-out turn still makes non-recording spans and propagates its
`traceparent` (so downstream services agree), so sampling saves about 40% of that, not 90%.
At volume, one trace in ten (a caller's sampled `traceparent` is always honoured):

    OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.1
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ModelPrice(BaseModel):
    """What one model costs, in USD per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0, description="USD per 1M input (prompt) tokens")
    output: float = Field(ge=0, description="USD per 1M output (completion) tokens")


class ObservabilityConfig(BaseModel):
    """Metrics, traces, logs and prices. The defaults suit a single process in production."""

    model_config = ConfigDict(extra="forbid")

    metrics: bool = True
    # A separate port serving only /metrics (any path answers); None: the app serves /metrics.
    # 0 picks a free port (see `Observability.metrics_port`).
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    # PROMETHEUS_MULTIPROC_DIR for several worker processes; the env var is honoured when unset.
    multiprocess_dir: str | None = None
    # How often each worker copies its statistics into the shared multiprocess files.
    stats_interval: float = Field(default=5.0, gt=0, le=300)
    # Distinct values one label may take before new values are reported as "other": label
    # values come from config (agents, models, tools) but a bug must not explode the series.
    max_label_values: int = Field(default=200, ge=1, le=100_000)

    tracing: bool = False
    # A client span per store call too (about six per turn, more than all the others), under
    # the run's span. Off, store latency is still in roost_store_operation_seconds.
    trace_store: bool = False
    service_name: str = "roost"

    log_format: Literal["json", "console", "auto"] = "auto"  # auto: json unless a TTY
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    access_log: bool = True
    # One info line per finished run (status, duration, tokens, cost).
    run_log: bool = True

    # Model name ("provider:model" or the bare model) -> price.
    prices: dict[str, ModelPrice] = Field(default_factory=dict)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        # ROOST_OBSERVABILITY__LOG_LEVEL=INFO is as good as "info".
        return value.lower() if isinstance(value, str) else value
