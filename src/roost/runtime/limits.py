"""Admission limits from config: `[admission]` → `AdmissionLimits`."""

from __future__ import annotations

import math
import os
from pathlib import Path

from roost.config import AdmissionConfig, TenantQuotaConfig
from roost.runtime.adaptive import AdaptiveConfig
from roost.runtime.admission import AdmissionLimits, TenantQuota


def _quota(config: TenantQuotaConfig) -> TenantQuota:
    return TenantQuota(max_running=config.max_running, max_queued=config.max_queued,
                       rate=config.rate, burst=config.burst, weight=config.weight)


def admission_limits(config: AdmissionConfig) -> AdmissionLimits:
    machine = AdmissionLimits.from_machine(cpu_count=available_cpus())
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


def available_cpus(root: Path = Path("/")) -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota.

    `os.cpu_count()` counts the host's CPUs: in a container limited to 2 CPUs on a 64-core
    node it says 64, and admission defaults sized from it would admit 32 times too much.
    A fractional quota (1.5 CPUs) rounds up: the loop gets the whole second CPU at times.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the tightest cgroup quota over this process's cgroup, None if none."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: cpu.max = "<quota|max> <period>" at each level
            for level in _levels(root / "sys/fs/cgroup", path):
                quota, _, period = _read(level / "cpu.max").partition(" ")
                if quota.isdigit() and period.strip().isdigit() and int(period) > 0:
                    quotas.append(int(quota) / int(period))
        elif "cpu" in controllers.split(","):  # cgroup v1: cfs_quota_us is -1 when unlimited
            for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                for level in _levels(root / "sys/fs/cgroup" / mount, path):
                    quota_us, period_us = (_read(level / "cpu.cfs_quota_us"),
                                           _read(level / "cpu.cfs_period_us"))
                    if quota_us.isdigit() and period_us.isdigit() and int(period_us) > 0:
                        quotas.append(int(quota_us) / int(period_us))
    return min(quotas) if quotas else None


def _levels(mount: Path, path: str) -> list[Path]:
    """The cgroup directory and its ancestors up to the mount (a container sees "/")."""
    parts = [p for p in path.strip().split("/") if p]
    return [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
