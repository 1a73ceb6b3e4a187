"""`Observability`: the one object that builds, starts and stops metrics, traces and logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextvars import Token
from typing import IO, Any

from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from roost.observability import logs, metrics
from roost.observability.asgi import ASGIApp, ObservabilityMiddleware
from roost.observability.config import ObservabilityConfig
from roost.observability.hooks import ObservabilityHooks
from roost.observability.metrics import Metrics, MetricsServer, StatsCollector, StatsProvider
from roost.observability.profiling import ProfileFormat, profile
from roost.observability.store import InstrumentedStore
from roost.observability.tracing import build_tracer_provider, tracing_disabled
from roost.observability.usage import PriceTable
from roost.sessions.store import Store

__all__ = ["Observability", "prepare_multiprocess_dir"]

prepare_multiprocess_dir = metrics.prepare_multiprocess_dir

log = logging.getLogger("roost.observability")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("roost")
    except Exception:  # pragma: no cover - not installed as a distribution
        return ""


class Observability:
    """Metrics, traces, logs and prices for one Roost process.

    `tracer_provider` overrides the OTLP provider built when `config.tracing` is on (and turns
    tracing on): tests pass one with an `InMemorySpanExporter`. `registry` overrides the fresh
    `CollectorRegistry` each instance otherwise gets (never prometheus-client's global one).
    """

    def __init__(
        self,
        config: ObservabilityConfig | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config = config if config is not None else ObservabilityConfig()
        self.prices = PriceTable(config.prices)

        self.registry: CollectorRegistry | None = None
        self.metrics: Metrics | None = None
        self.multiprocess_dir: str | None = None
        self._stats = StatsCollector(config.max_label_values)
        if config.metrics:
            mp_dir = config.multiprocess_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            if mp_dir:
                metrics.enable_multiprocess(mp_dir)
                self.multiprocess_dir = mp_dir
                # Instruments write to the shared files; the exposition reads them back.
                self.metrics = Metrics(None, max_label_values=config.max_label_values)
            else:
                self.registry = registry if registry is not None else CollectorRegistry()
                self.metrics = Metrics(self.registry, max_label_values=config.max_label_values)
                self.registry.register(self._stats)

        self._owns_provider = False
        provider = tracer_provider
        if provider is None and config.tracing and not tracing_disabled():
            provider = build_tracer_provider(config.service_name, _version())
            self._owns_provider = True
        self.tracer_provider = provider
        self.tracer: trace.Tracer | None = (
            provider.get_tracer("roost", _version()) if provider is not None else None
        )

        self.hooks = ObservabilityHooks(
            metrics=self.metrics, tracer=self.tracer, prices=self.prices,
            run_log=config.run_log,
        )
        self._server: MetricsServer | None = None
        self._refresher: asyncio.Task[None] | None = None

    # -- wiring ---------------------------------------------------------------------------------

    def asgi_middleware(self, app: ASGIApp) -> ASGIApp:
        """Wrap `app` (outermost) with request ids, log context, server spans, HTTP metrics."""
        return ObservabilityMiddleware(app, self)

    def instrument_store(self, store: Store) -> Store:
        """`store`, timed per operation (and traced with `trace_store`: store spans are the
        most numerous, ~0.1 ms a turn). Unchanged when nothing is measured."""
        tracer = self.tracer if self.config.trace_store else None
        if self.metrics is None and tracer is None:
            return store
        return InstrumentedStore(store, metrics=self.metrics, tracer=tracer)

    def register_stats(
        self,
        name: str,
        provider: StatsProvider,
        *,
        labels: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        """Read `provider()` at every scrape: `{key: number | {label value: …}}` -> `roost_<key>`.

        Well-known keys (`metrics.STATS`): `queue_depth` {tenant: {priority: n}},
        `runs_running` {tenant: n}, `admission_rejections_total` {reason: n} (cumulative),
        `sessions_active`, `sessions_cached`, `sessions_cached_bytes`, `breaker_state`
        {provider: "closed" | "half_open" | "open" | 0-2}. Other keys become gauges (counters
        when they end in `_total`); `labels` names their nesting levels. Registering a name
        again replaces its provider. The provider runs on the scraping thread — the event
        loop when /metrics is served by the app or `metrics_port` — and must be cheap.
        """
        self._stats.register(name, provider, labels or {})

    def unregister_stats(self, name: str) -> None:
        self._stats.unregister(name)

    def metrics_response(self) -> tuple[bytes, str]:
        """The Prometheus exposition (body, content type); aggregated across workers in
        multiprocess mode. Call it on the event loop (statistics providers are not thread-safe);
        it costs about a millisecond."""
        if self.metrics is None:
            return b"", CONTENT_TYPE_LATEST
        if self.multiprocess_dir is not None:
            self._refresh_stats()
            return metrics.multiprocess_exposition(self.multiprocess_dir), CONTENT_TYPE_LATEST
        assert self.registry is not None
        return metrics.exposition(self.registry)

    @property
    def metrics_port(self) -> int | None:
        """The port `start()` bound for /metrics (None without `metrics_port`)."""
        return self._server.port if self._server is not None else None

    # -- log context ----------------------------------------------------------------------------

    def configure_logging(self, stream: IO[str] | None = None) -> logging.Handler:
        """Route all logging through Roost's structured format (process-wide; idempotent)."""
        return logs.configure_logging(
            self.config.log_level, self.config.log_format, stream=stream,
            access_log=self.config.access_log,
        )

    @staticmethod
    def bind(**fields: Any) -> Token[Mapping[str, Any]]:
        """Add fields to every log line of the current task; `unbind(token)` to undo."""
        return logs.bind(**fields)

    @staticmethod
    def unbind(token: Token[Mapping[str, Any]]) -> None:
        logs.unbind(token)

    @staticmethod
    @contextlib.contextmanager
    def bound(**fields: Any) -> Iterator[None]:
        """`with obs.bound(tenant=t):` — fields on every log line inside the block."""
        with logs.bound(**fields):
            yield

    # -- profiling ------------------------------------------------------------------------------

    @staticmethod
    async def profile(
        seconds: float, *, interval: float = 0.001, format: ProfileFormat = "text"
    ) -> str:
        """See `roost.observability.profiling.profile`."""
        return await profile(seconds, interval=interval, format=format)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve `metrics_port` and, in multiprocess mode, refresh shared statistics."""
        if self.metrics is None:
            return
        if self.config.metrics_port is not None and self._server is None:
            server = MetricsServer(
                self.metrics_response, self.config.metrics_host, self.config.metrics_port,
                reuse_port=self.multiprocess_dir is not None,
            )
            await server.start()
            self._server = server
        if self.multiprocess_dir is not None and self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever(),
                                                  name="roost-stats-refresh")

    async def shutdown(self) -> None:
        """Stop what `start` started, drop this worker's live gauges, flush pending spans."""
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        server, self._server = self._server, None
        if server is not None:
            await server.stop()
        if self.multiprocess_dir is not None:
            metrics.worker_exited(self.multiprocess_dir)
        provider = self.tracer_provider
        if provider is not None:
            # Flushing exports over the network: never on the loop.
            if self._owns_provider:
                await asyncio.to_thread(provider.shutdown)  # type: ignore[attr-defined]
            elif hasattr(provider, "force_flush"):
                await asyncio.to_thread(provider.force_flush)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval)
            self._refresh_stats()

    def _refresh_stats(self) -> None:
        try:
            self._stats.refresh_mirror()
        except Exception:  # never let statistics break a scrape or the refresher
            log.exception("refreshing multiprocess statistics failed")
