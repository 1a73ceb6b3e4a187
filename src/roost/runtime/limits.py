"""Admission limits from config: `[admission]` → `AdmissionLimits`."""

from __future__ import annotations

from roost.config import AdmissionConfig, TenantQuotaConfig
from roost.runtime.adaptive import AdaptiveConfig
from roost.runtime.admission import AdmissionLimits, TenantQuota


def _quota(config: TenantQuotaConfig) -> TenantQuota:
    return TenantQuota(max_running=config.max_running, max_queued=config.max_queued,
                       rate=config.rate, burst=config.burst, weight=config.weight)


def admission_limits(config: AdmissionConfig) -> AdmissionLimits:
    machine = AdmissionLimits.from_machine()
    max_running = config.max_running or machine.max_running
    max_queued = config.max_queued if config.max_queued is not None else 2 * max_running
    return AdmissionLimits(
        max_running=max_running,
        max_queued=max_queued,
        default_quota=_quota(config.default_quota),
        tenants={name: _quota(q) for name, q in config.tenants.items()},
        adaptive=AdaptiveConfig(initial_limit=min(20, max_running), max_limit=max_running,
                                target_busy=config.adaptive_target_busy,
                                max_lag_s=config.adaptive_max_lag_s)
        if config.adaptive else None,
    )
