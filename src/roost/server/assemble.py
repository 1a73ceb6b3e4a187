"""Put a server together: settings + agents → an instrumented Runtime and its Observability.

Observability is injected here, at the edge: the runtime gets `hooks` and an instrumented
store, the app gets the middleware and `/metrics`; domain code never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from roost.agent import Agent
from roost.config import Settings
from roost.observability import Observability
from roost.runtime.runtime import Runtime
from roost.sessions import open_store
from roost.sessions.store import Store
from roost.tools.threads import TOOL_THREADS


def assemble(settings: Settings, agents: Iterable[Agent], *,
             store: Store | None = None) -> tuple[Runtime, Observability]:
    observability = Observability(settings.observability)
    store = observability.instrument_store(
        store or open_store(settings.store.url, **settings.store.options))
    runtime = Runtime(settings, agents, store=store, hooks=observability.hooks)
    observability.register_stats("runtime", lambda: runtime_gauges(runtime))
    observability.register_stats("background", lambda: background_gauges(runtime))
    observability.register_stats("webhooks", lambda: webhook_gauges(runtime))
    observability.register_stats("tool_threads", TOOL_THREADS.gauges,
                                 labels={"tool_threads_" + k: ("agent",) for k in
                                         ("running", "queued", "abandoned", "abandoned_total")})
    policy_state = runtime.models.policy_state
    if policy_state is not None:
        observability.register_stats("models", lambda: model_gauges(policy_state))
    return runtime, observability


def runtime_gauges(runtime: Runtime) -> Mapping[str, Any]:
    """The runtime primitives' own statistics, in the shape the metrics layer reads."""
    admission = runtime.admission.statistics()
    cache = runtime.cache.statistics()
    return {
        "queue_depth": {tenant: {"all": n} for tenant, n in admission.queued_by_tenant.items()},
        "queue_depth_by_priority": dict(admission.queued_by_priority),
        "runs_running": dict(admission.running_by_tenant),
        "admission_rejections_total": dict(admission.rejected),
        "admission_running_limit": admission.running_limit,
        "event_loop_busy_ratio": admission.loop_busy,
        "event_loop_lag_seconds": admission.loop_lag_s,
        "sessions_active": len(runtime.lanes),
        "sessions_cached": cache.sessions,
        "sessions_cached_bytes": cache.bytes,
    }


def background_gauges(runtime: Runtime) -> Mapping[str, Any]:
    """The durable queue's traffic through this instance, and its schedule ticks."""
    runs, ticks = runtime.background.stats, runtime.scheduler
    return {"background_submitted_total": runs.submitted,
            "background_claims_total": runs.claims,
            "background_claimed_total": runs.claimed,
            "background_requeued_total": runs.requeued,
            "schedule_ticks_fired_total": ticks.fired,
            "schedule_ticks_lost_total": ticks.lost}


def webhook_gauges(runtime: Runtime) -> Mapping[str, Any]:
    """Webhook deliveries attempted by this instance (roost_webhook_*)."""
    s = runtime.webhooks.stats
    return {"webhook_attempts_total": s.attempts, "webhook_delivered_total": s.delivered,
            "webhook_retries_total": s.retries, "webhook_failed_total": s.failed,
            "webhook_deliveries_in_flight": s.in_flight}


def model_gauges(policy_state: Any) -> Mapping[str, Any]:
    stats = policy_state.statistics()
    return {"breaker_state": {name: b["state"] for name, b in stats["breakers"].items()}}
