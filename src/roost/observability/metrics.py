"""Prometheus metrics: Roost's instruments, statistics read at scrape time, the exposition.

Every series carries bounded labels only — agent, model, tool, route, never a session or run
id — and each label is capped (`LabelGuard`): past `max_label_values` distinct values a label
reports "other", so a bug cannot explode the series count.

Several worker processes share metrics through `PROMETHEUS_MULTIPROC_DIR` (prometheus-client's
multiprocess mode): counters and histograms sum across workers, gauges sum over live ones, and
statistics providers are mirrored into the shared files on every scrape and every
`stats_interval` seconds.

Statistics come from the primitives themselves (anyio's `statistics()` idiom): a provider is a
cheap function returning `{key: number | {label value: number | {…}}}`; each key is a metric
suffix (`queue_depth` -> `roost_queue_depth`), each nesting level a label (`STATS` names them).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

log = logging.getLogger("roost.observability")

OTHER = "other"

StatsProvider = Callable[[], Mapping[str, Any]]


class LabelGuard:
    """Pass the first `limit` distinct values of a label through; report later ones as "other"."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        known = self._seen.get(value)
        if known is not None:
            return known
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen[value] = value
        return value


# Buckets per kind of latency; few buckets keep `observe` (a linear scan) cheap.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
MODEL_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
TOOL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1, 2.5)


class Metrics:
    """Roost's instruments, registered on `registry` (or, in multiprocess mode, on none: the
    exposition then reads the shared files)."""

    def __init__(self, registry: CollectorRegistry | None, *, max_label_values: int) -> None:
        # `*_created` series double the exposition and Prometheus gains nothing from them in
        # the text format. A prometheus-client switch, process-wide.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        reg = registry
        self.http_requests = Counter(
            "roost_http_requests", "HTTP requests by route template, method and status.",
            ("route", "method", "status"), registry=reg)
        self.http_duration = Histogram(
            "roost_http_request_duration_seconds", "HTTP request duration (to the last byte).",
            ("route", "method"), buckets=HTTP_BUCKETS, registry=reg)
        self.runs = Counter(
            "roost_runs", "Finished runs by agent and outcome (terminal status).",
            ("agent", "outcome"), registry=reg)
        self.run_duration = Histogram(
            "roost_run_duration_seconds", "Run duration, start to terminal status.",
            ("agent",), buckets=RUN_BUCKETS, registry=reg)
        self.runs_in_flight = Gauge(
            "roost_runs_in_flight", "Runs executing now.", registry=reg,
            multiprocess_mode="livesum")
        self.model_calls = Counter(
            "roost_model_calls", "Model calls by provider, model and outcome.",
            ("provider", "model", "outcome"), registry=reg)
        self.model_latency = Histogram(
            "roost_model_latency_seconds", "Model call duration, request to final response.",
            ("provider", "model"), buckets=MODEL_BUCKETS, registry=reg)
        self.model_ttft = Histogram(
            "roost_model_ttft_seconds", "Time to the first streamed token.",
            ("provider", "model"), buckets=MODEL_BUCKETS, registry=reg)
        self.model_errors = Counter(
            "roost_model_errors", "Failed model calls by provider, model and error kind.",
            ("provider", "model", "kind"), registry=reg)
        self.tokens = Counter(
            "roost_tokens", "Tokens by provider, model (the one that answered) and direction.",
            ("provider", "model", "direction"), registry=reg)
        self.cost = Counter(
            "roost_cost", "Spend in USD by model, from the configured prices.",
            ("model",), registry=reg)
        self.tool_calls = Counter(
            "roost_tool_calls", "Tool calls by tool and outcome.",
            ("tool", "outcome"), registry=reg)
        self.tool_duration = Histogram(
            "roost_tool_duration_seconds", "Tool call duration.",
            ("tool",), buckets=TOOL_BUCKETS, registry=reg)
        self.guardrails = Counter(
            "roost_guardrail_decisions", "Guardrail decisions other than pass, by agent, "
            "guardrail, stage (input, output, tool_result) and action.",
            ("agent", "guardrail", "stage", "action"), registry=reg)
        self.store_latency = Histogram(
            "roost_store_operation_seconds", "Store operation duration by backend and operation.",
            ("backend", "operation"), buckets=STORE_BUCKETS, registry=reg)
        self.store_errors = Counter(
            "roost_store_errors", "Store operations that raised, by error type.",
            ("backend", "operation", "kind"), registry=reg)
        self._guards: dict[str, LabelGuard] = {}
        self._max_label_values = max_label_values
        self._children: dict[tuple[Any, ...], Any] = {}

    def guard(self, label: str) -> LabelGuard:
        """The cap for one label dimension, shared by every metric using it."""
        found = self._guards.get(label)
        if found is None:
            found = self._guards[label] = LabelGuard(self._max_label_values)
        return found

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: the hot path pays one dict lookup.

        Callers pass guarded values, so the cache is bounded like the series are.
        """
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


# -- statistics providers -------------------------------------------------------------------


class StatsSpec(NamedTuple):
    labels: tuple[str, ...]
    help: str
    # How workers' values combine in multiprocess mode.
    combine: Literal["sum", "max"] = "sum"
    # Named states a provider may report instead of numbers.
    states: Mapping[str, float] | None = None


BREAKER_STATES: Mapping[str, float] = {"closed": 0.0, "half_open": 1.0, "open": 2.0}

STATS: dict[str, StatsSpec] = {
    "queue_depth": StatsSpec(("tenant", "priority"), "Runs waiting for admission."),
    "runs_running": StatsSpec(("tenant",), "Runs admitted and executing, per tenant."),
    "admission_rejections_total": StatsSpec(("reason",), "Runs refused by admission control."),
    "admission_running_limit": StatsSpec((), "Running runs admission allows now (adaptive or "
                                         "max_running)."),
    "event_loop_busy_ratio": StatsSpec((), "Share of the event loop thread's time on CPU, last "
                                       "sample.", "max"),
    "event_loop_lag_seconds": StatsSpec((), "How late the event loop ran a timer, last sample.",
                                        "max"),
    "sessions_active": StatsSpec((), "Sessions with a run in progress."),
    "sessions_cached": StatsSpec((), "Sessions held in the in-memory cache."),
    "sessions_cached_bytes": StatsSpec((), "Approximate bytes held by the session cache."),
    "breaker_state": StatsSpec(
        ("provider",), "Circuit breaker state: 0 closed, 1 half-open, 2 open.", "max",
        BREAKER_STATES),
}
"""Well-known statistics keys (`roost_<key>`) and their label names."""

_BUILTIN_NAMES = frozenset(
    {"http_requests_total", "http_request_duration_seconds", "runs_total", "run_duration_seconds",
     "runs_in_flight", "model_calls_total", "model_latency_seconds", "model_ttft_seconds",
     "model_errors_total", "tokens_total", "cost_total", "tool_calls_total",
     "tool_duration_seconds", "store_operation_seconds", "store_errors_total"})


class _Family(NamedTuple):
    key: str
    spec: StatsSpec
    samples: dict[tuple[str, ...], float]


class StatsCollector:
    """Reads registered providers at scrape time (a prometheus-client custom collector).

    Providers are called on the thread that scrapes: keep scrapes on the event loop (the app's
    /metrics route, or `MetricsServer`), as the primitives they read are not thread-safe.
    """

    def __init__(self, max_label_values: int) -> None:
        self._providers: dict[str, tuple[StatsProvider, Mapping[str, tuple[str, ...]]]] = {}
        self._max_label_values = max_label_values
        self._guards: dict[tuple[str, int], LabelGuard] = {}
        self._reported: dict[str, set[str]] = {}
        # Multiprocess mirror: metric objects, last counter values, label sets last written.
        self._mirror: dict[str, Any] = {}
        self._counter_last: dict[tuple[str, tuple[str, ...]], float] = {}
        self._gauge_written: dict[str, set[tuple[str, ...]]] = {}

    def register(
        self, name: str, provider: StatsProvider, labels: Mapping[str, tuple[str, ...]]
    ) -> None:
        self._providers[name] = (provider, dict(labels))

    def unregister(self, name: str) -> None:
        self._providers.pop(name, None)
        self._reported.pop(name, None)

    def families(self) -> list[_Family]:
        """One snapshot of every provider, flattened, label-capped and combined."""
        out: dict[str, _Family] = {}
        for name, (provider, labels) in list(self._providers.items()):
            try:
                stats = provider()
            except Exception as exc:  # a broken provider must not break the scrape
                self._report(name, f"{type(exc).__name__}: {exc}")
                continue
            for key, value in stats.items():
                if not key.isidentifier() or key in _BUILTIN_NAMES:
                    self._report(name, f"invalid or reserved statistics key {key!r}")
                    continue
                spec = STATS.get(key) or StatsSpec(labels.get(key, ()), f"{name} statistic {key}.")
                if key in labels and key in STATS:
                    spec = spec._replace(labels=labels[key])
                family = out.get(key)
                if family is None:
                    family = out[key] = _Family(key, spec, {})
                for path, raw in _flatten(value):
                    number = _number(raw, spec.states)
                    if number is None:
                        continue
                    label_values = tuple(
                        self._guard(key, i)(v) for i, v in enumerate(path)
                    )
                    prior = family.samples.get(label_values)
                    if prior is None:
                        family.samples[label_values] = number
                    elif spec.combine == "max":
                        family.samples[label_values] = max(prior, number)
                    else:
                        family.samples[label_values] = prior + number
        return list(out.values())

    def collect(self) -> Iterator[Metric]:
        for family in self.families():
            yield from _to_metrics(family)

    def refresh_mirror(self) -> None:
        """Copy this worker's statistics into the multiprocess files."""
        seen_keys: set[str] = set()
        for family in self.families():
            depth = _depth(family)
            if depth is None:
                continue
            seen_keys.add(family.key)
            metric = self._mirror_metric(family, depth)
            if metric is None:
                continue  # the provider changed its nesting; keep the first shape
            if isinstance(metric, Counter):
                for label_values, number in family.samples.items():
                    # Providers report cumulative counts; the shared counter gets the delta
                    # (the whole value again when the primitive's count went back to zero).
                    series = (family.key, label_values)
                    last = self._counter_last.get(series, 0.0)
                    delta = number - last if number >= last else number
                    if delta > 0:
                        _child(metric, label_values).inc(delta)
                    self._counter_last[series] = number
            else:
                for label_values, number in family.samples.items():
                    _child(metric, label_values).set(number)
                self._zero_gauges(family.key, set(family.samples))
        for key in list(self._gauge_written):
            if key not in seen_keys:
                self._zero_gauges(key, set())

    def _zero_gauges(self, key: str, current: set[tuple[str, ...]]) -> None:
        # A label set that disappeared (an emptied tenant queue) reads 0, not its last value.
        metric = self._mirror[key][0]
        for label_values in self._gauge_written.get(key, set()) - current:
            _child(metric, label_values).set(0)
        self._gauge_written[key] = current

    def _mirror_metric(self, family: _Family, depth: int) -> Any:
        found = self._mirror.get(family.key)
        if found is not None:
            metric, known_depth = found
            return metric if known_depth == depth else None
        names = _label_names(family.spec, depth)
        if family.key.endswith("_total"):
            metric = Counter(f"roost_{family.key[:-6]}", family.spec.help, names, registry=None)
        else:
            mode: Any = "livemax" if family.spec.combine == "max" else "livesum"
            metric = Gauge(f"roost_{family.key}", family.spec.help, names, registry=None,
                           multiprocess_mode=mode)
        self._mirror[family.key] = (metric, depth)
        return metric

    def _guard(self, key: str, index: int) -> LabelGuard:
        found = self._guards.get((key, index))
        if found is None:
            found = self._guards[(key, index)] = LabelGuard(self._max_label_values)
        return found

    def _report(self, name: str, problem: str) -> None:
        # Once per distinct problem, not once per scrape (and a bounded memory of them).
        reported = self._reported.setdefault(name, set())
        if problem not in reported and len(reported) < 100:
            reported.add(problem)
            log.warning("statistics provider failed", extra={"provider": name, "problem": problem})


def _child(metric: Any, label_values: tuple[str, ...]) -> Any:
    return metric.labels(*label_values) if label_values else metric


def _flatten(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _flatten(inner, (*path, str(key)))
    else:
        yield path, value


def _number(value: Any, states: Mapping[str, float] | None) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and states is not None:
        return states.get(value.lower())
    return None


def _depth(family: _Family) -> int | None:
    """The label depth of a family; None (skipped) when samples disagree on it."""
    depths = {len(k) for k in family.samples}
    return depths.pop() if len(depths) == 1 else None


def _label_names(spec: StatsSpec, depth: int) -> tuple[str, ...]:
    names = spec.labels[:depth]
    return names + tuple(f"key{i}" if i else "key" for i in range(len(names), depth))


def _to_metrics(family: _Family) -> Iterator[Metric]:
    depth = _depth(family)
    if depth is None:
        return
    names = _label_names(family.spec, depth)
    metric: CounterMetricFamily | GaugeMetricFamily
    if family.key.endswith("_total"):
        metric = CounterMetricFamily(f"roost_{family.key}", family.spec.help, labels=names)
    else:
        metric = GaugeMetricFamily(f"roost_{family.key}", family.spec.help, labels=names)
    for label_values, number in family.samples.items():
        metric.add_metric(label_values, number)
    yield metric


# -- multiprocess mode ------------------------------------------------------------------------


def enable_multiprocess(path: str) -> None:
    """Switch prometheus-client to shared files under `path` for metrics created from now on.

    prometheus-client picks its value class from `PROMETHEUS_MULTIPROC_DIR` at import time;
    setting the variable here (and refreshing that choice) lets config name the directory.
    """
    os.makedirs(path, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def prepare_multiprocess_dir(path: str) -> None:
    """Create `path` and remove files left by a previous server.

    Call it in the supervising process *before* starting workers: stale files would add the
    last run's counts to this one's.
    """
    os.makedirs(path, exist_ok=True)
    for file in glob.glob(os.path.join(path, "*.db")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(file)


def multiprocess_exposition(path: str) -> bytes:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def worker_exited(path: str, pid: int | None = None) -> None:
    """Drop a worker's live gauges (in-flight runs, statistics) from the shared files."""
    mark_process_dead(pid if pid is not None else os.getpid(), path)  # type: ignore[no-untyped-call]


# -- a separate metrics port ------------------------------------------------------------------


class MetricsServer:
    """A minimal HTTP/1.1 server answering every GET with the exposition, on the event loop.

    On the loop rather than prometheus-client's thread, so statistics providers run where
    the primitives they read live. Several workers share the port (SO_REUSEPORT); in
    multiprocess mode each answers for all.
    """

    def __init__(
        self, render: Callable[[], tuple[bytes, str]], host: str, port: int, *,
        reuse_port: bool = False,
    ) -> None:
        self._render = render
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int | None:
        """The bound port (useful when configured as 0), None before `start`."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, self._host, self._port, reuse_port=self._reuse_port or None,
                limit=16 * 1024,
            )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                head = await reader.readuntil(b"\r\n\r\n")
                method = head.split(b" ", 1)[0]
                if method in (b"GET", b"HEAD"):
                    body, content_type = self._render()
                    status = b"200 OK"
                else:
                    body, content_type, status = b"", "text/plain", b"405 Method Not Allowed"
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type.encode()
                    + b"\r\nContent-Length: " + str(len(body)).encode()
                    + b"\r\nConnection: close\r\n\r\n" + (b"" if method == b"HEAD" else body)
                )
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a scraper that hung up or sent garbage; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST
