"""Observability: Prometheus metrics, OpenTelemetry GenAI traces, structured logs, cost, profiles.

One object, built from config and *injected* — domain code never imports this package:

    obs = Observability(settings.observability)
    obs.configure_logging()                              # process-wide, once, at startup
    store = obs.instrument_store(open_store(url))
    runtime = Runtime(..., hooks=obs.hooks)              # the engine's EngineHooks
    obs.register_stats("runtime", runtime.statistics)    # gauges read at scrape time
    app = obs.asgi_middleware(app)                       # outermost
    await obs.start()                                    # metrics port, multiprocess refresh
    ...
    body, content_type = obs.metrics_response()          # GET /metrics
    await obs.shutdown()                                 # flush spans, stop what start started

The names below are imported on first use: `roost.config` needs `ObservabilityConfig` (a
plain pydantic model), and `import roost` should not pay for OpenTelemetry, prometheus-client
and structlog (a third of a cold import) before anything observes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from roost.observability.asgi import ObservabilityMiddleware
    from roost.observability.config import ModelPrice, ObservabilityConfig
    from roost.observability.facade import Observability, prepare_multiprocess_dir
    from roost.observability.hooks import ObservabilityHooks
    from roost.observability.profiling import profile
    from roost.observability.store import InstrumentedStore
    from roost.observability.usage import PriceTable, UsageGroup, aggregate

_EXPORTS = {
    "InstrumentedStore": "roost.observability.store",
    "ModelPrice": "roost.observability.config",
    "Observability": "roost.observability.facade",
    "ObservabilityConfig": "roost.observability.config",
    "ObservabilityHooks": "roost.observability.hooks",
    "ObservabilityMiddleware": "roost.observability.asgi",
    "PriceTable": "roost.observability.usage",
    "UsageGroup": "roost.observability.usage",
    "aggregate": "roost.observability.usage",
    "prepare_multiprocess_dir": "roost.observability.facade",
    "profile": "roost.observability.profiling",
}

__all__ = [
    "InstrumentedStore",
    "ModelPrice",
    "Observability",
    "ObservabilityConfig",
    "ObservabilityHooks",
    "ObservabilityMiddleware",
    "PriceTable",
    "UsageGroup",
    "aggregate",
    "prepare_multiprocess_dir",
    "profile",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:  # `from roost.observability import logs` then imports the submodule
        raise AttributeError(f"module 'roost.observability' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
