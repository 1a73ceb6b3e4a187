"""An adaptive concurrency limit: Gradient2, after Netflix's concurrency-limits.

A fixed `max_running` is a guess. Gradient2 measures instead: it compares the latency of each
finished run (the *short* RTT, one sample) with a slow exponential average of past latencies
(the *long* RTT, ~`long_window` samples) and moves the limit by their ratio:

    gradient  = clamp(tolerance * long_rtt / short_rtt, 0.5, 1.0)
    new_limit = limit * gradient + queue_size                 # queue_size: sqrt(limit) default
    limit     = limit * (1 - smoothing) + new_limit * smoothing, bounded [min_limit, max_limit]

When latency is flat the gradient is 1 and the limit creeps up by `queue_size` (smoothed):
it probes for more capacity. When runs slow down past `tolerance` (1.5: 50% slower than the
long-term average) the gradient drops below 1 and the limit shrinks, at most halving per
sample, so work waits in the admission queue (where it is fair, bounded and cancellable)
instead of piling onto a saturated model provider. If the long average drifted far above the
present (after a long overload), it is pulled down 5% per sample so recovery does not wait for
the slow average. While fewer than half the permitted runs are in flight the system is
"app-limited": samples say nothing about capacity, so the limit holds.

Failed runs are not samples (the caller passes ok=False): errors often return fast and would
pull the short RTT down, loosening the limit exactly when a dependency is failing.

    limiter = GradientLimiter(AdaptiveConfig(min_limit=10, max_limit=2000))
    limit = limiter.on_sample(rtt=2.1, inflight=180)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from roost.errors import ConfigError


@dataclass(frozen=True, slots=True)
class AdaptiveConfig:
    """Bounds and tuning of the adaptive limit. Defaults follow Netflix's Gradient2."""

    initial_limit: int = 20
    min_limit: int = 1
    max_limit: int = 1000
    # Weight of each new limit estimate; lower is steadier and slower.
    smoothing: float = 0.2
    # How much slower than the long-term average a run may be before the limit shrinks.
    tolerance: float = 1.5
    # Samples in the long-term latency average, and the first samples averaged plainly.
    long_window: int = 600
    warmup: int = 10
    # Headroom added each update; None means sqrt(limit) (grows fast when small, slow when big).
    queue_size: float | None = None

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        if self.min_limit < 1:
            problems.append(("min_limit", "must be at least 1"))
        if self.max_limit < self.min_limit:
            problems.append(("max_limit", "must be at least min_limit"))
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            problems.append(("initial_limit", "must lie within [min_limit, max_limit]"))
        if not 0.0 < self.smoothing <= 1.0:
            problems.append(("smoothing", "must be in (0, 1]"))
        if not self.tolerance >= 1.0:
            problems.append(("tolerance", "must be at least 1"))
        if self.long_window < 1:
            problems.append(("long_window", "must be at least 1"))
        if self.warmup < 0:
            problems.append(("warmup", "must not be negative"))
        if self.queue_size is not None and not self.queue_size >= 0.0:
            problems.append(("queue_size", "must not be negative"))
        if problems:
            raise ConfigError("invalid adaptive concurrency settings", problems)


class _ExpAvg:
    """Plain mean over the first `warmup` samples, then an exponential moving average."""

    __slots__ = ("value", "_count", "_warmup", "_factor")

    def __init__(self, window: int, warmup: int) -> None:
        self.value = 0.0
        self._count = 0
        self._warmup = warmup
        self._factor = 2.0 / (window + 1)

    def add(self, sample: float) -> float:
        if self._count < self._warmup:
            self._count += 1
            self.value += (sample - self.value) / self._count
        else:
            self.value += (sample - self.value) * self._factor
        return self.value


class GradientLimiter:
    """The Gradient2 limit. Feed it one sample per finished run; read `limit`."""

    __slots__ = ("config", "_limit", "_long_rtt")

    def __init__(self, config: AdaptiveConfig, *, initial_limit: float | None = None) -> None:
        self.config = config
        start = config.initial_limit if initial_limit is None else initial_limit
        self._limit = float(min(max(start, config.min_limit), config.max_limit))
        self._long_rtt = _ExpAvg(config.long_window, config.warmup)

    @property
    def limit(self) -> int:
        """The current limit, a whole number of runs within [min_limit, max_limit]."""
        return int(self._limit)

    @property
    def estimate(self) -> float:
        """The unrounded limit (for statistics)."""
        return self._limit

    @property
    def long_rtt(self) -> float:
        return self._long_rtt.value

    def on_sample(self, rtt: float, inflight: int) -> int:
        """Account one finished run: its latency and the runs in flight when it started."""
        if not (rtt > 0.0 and math.isfinite(rtt)):
            return self.limit  # a zero or broken measurement carries no information
        cfg = self.config
        long_rtt = self._long_rtt.add(rtt)
        if long_rtt / rtt > 2.0:
            self._long_rtt.value = long_rtt * 0.95
        if inflight < self._limit / 2.0:
            return self.limit
        gradient = max(0.5, min(1.0, cfg.tolerance * long_rtt / rtt))
        queue_size = math.sqrt(self._limit) if cfg.queue_size is None else cfg.queue_size
        target = self._limit * gradient + queue_size
        limit = self._limit * (1.0 - cfg.smoothing) + target * cfg.smoothing
        self._limit = min(max(limit, float(cfg.min_limit)), float(cfg.max_limit))
        return self.limit

    def __repr__(self) -> str:
        return f"GradientLimiter(limit={self._limit:.1f}, long_rtt={self._long_rtt.value:.4f})"
