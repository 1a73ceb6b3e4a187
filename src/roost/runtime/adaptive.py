"""An adaptive concurrency limit driven by the event loop's own load.

A fixed `max_running` is a guess: right for one model latency, far off for another. With a
50 ms model the default 512 running runs saturate the loop and p99 climbs to tens of seconds;
with a 10 s model 512 is too few. The limit has to follow what the process can do.

Why not the runs' latency (Gradient2, TCP Vegas)? An agent run's latency is mostly the
model's, and that varies tenfold with the length of the answer, not with this process's
load; Gradient2's slow average follows a sustained rise, so it read a saturated loop as the
new normal and let the limit climb to its ceiling (bench/overload.py --adaptive: p99 35 s,
before this limiter). What the admission limit protects is the event loop, so it measures
the loop, every `interval_s`:

* busy: the loop thread's CPU time over wall time (`time.thread_time()`; other threads,
  such as the SQLite writer, are not counted);
* lag: how late the sampler's own timer fired — everything on the loop waits that long.

Then AIMD, as TCP does: over `target_busy` or `max_lag_s`, the limit is cut by `decrease`
(10% per sample: halved in ~0.7 s), and by more the further over the target the loop is
(a third at 100% busy); under both while the limit is what holds work back
(runs waiting in the queue or the limit reached), it grows by `increase` of itself, scaled by
the headroom left (fast when idle, slow near the target). When nothing waits for a slot the
limit holds: there is nothing to learn.

    limiter = LoadLimiter(AdaptiveConfig(max_limit=1000))
    limit = limiter.on_load(busy=0.92, lag_s=0.004, wanting=True)   # cut
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from roost.errors import ConfigError


@dataclass(frozen=True, slots=True)
class AdaptiveConfig:
    """Bounds and tuning of the adaptive limit."""

    initial_limit: int = 20
    min_limit: int = 1
    max_limit: int = 1000
    # Loop-thread CPU fraction above which the limit shrinks: headroom for bursts, and for
    # the refusals an overloaded server still answers. bench/overload.py at 3x load: 0.7
    # kept admitted turns' p99 at 1.45-1.52x the model floor in five runs; 0.75 admitted
    # ~60% more turns but their p99 reached 1.56-2.02x (docs/performance.md).
    target_busy: float = 0.7
    # Loop lag above which the limit shrinks, whatever the CPU says (e.g. another process
    # took the core, or a long garbage collection).
    max_lag_s: float = 0.025
    interval_s: float = 0.1
    decrease: float = 0.9
    increase: float = 0.1

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        if self.min_limit < 1:
            problems.append(("min_limit", "must be at least 1"))
        if self.max_limit < self.min_limit:
            problems.append(("max_limit", "must be at least min_limit"))
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            problems.append(("initial_limit", "must lie within [min_limit, max_limit]"))
        if not 0.0 < self.target_busy <= 1.0:
            problems.append(("target_busy", "must be in (0, 1]"))
        if not self.max_lag_s > 0.0:
            problems.append(("max_lag_s", "must be positive"))
        if not self.interval_s > 0.0:
            problems.append(("interval_s", "must be positive"))
        if not 0.0 < self.decrease < 1.0:
            problems.append(("decrease", "must be in (0, 1)"))
        if not self.increase > 0.0:
            problems.append(("increase", "must be positive"))
        if problems:
            raise ConfigError("invalid adaptive concurrency settings", problems)


class LoadLimiter:
    """The AIMD limit. Feed it one load sample per interval; read `limit`."""

    __slots__ = ("config", "_limit")

    def __init__(self, config: AdaptiveConfig, *, initial_limit: float | None = None) -> None:
        self.config = config
        start = config.initial_limit if initial_limit is None else initial_limit
        self._limit = float(min(max(start, config.min_limit), config.max_limit))

    @property
    def limit(self) -> int:
        """The current limit, a whole number of runs within [min_limit, max_limit]."""
        return int(self._limit)

    @property
    def estimate(self) -> float:
        """The unrounded limit (for statistics)."""
        return self._limit

    def on_load(self, busy: float, lag_s: float, *, wanting: bool) -> int:
        """Account one sample: the loop's busy fraction and lag over the last interval, and
        whether work was waiting for a slot (`wanting`)."""
        if not (math.isfinite(busy) and math.isfinite(lag_s)):
            return self.limit  # a broken measurement carries no information
        cfg = self.config
        if busy > cfg.target_busy or lag_s > cfg.max_lag_s:
            # Cut harder the further over the target the loop is (at most to 2/3 at 100%).
            factor = min(cfg.decrease, cfg.decrease * cfg.target_busy / busy) if busy else cfg.decrease
            self._limit = max(float(cfg.min_limit), self._limit * factor)
        elif wanting:
            headroom = 1.0 - busy / cfg.target_busy
            step = max(1.0, self._limit * cfg.increase * headroom)
            self._limit = min(float(cfg.max_limit), self._limit + step)
        return self.limit

    def __repr__(self) -> str:
        return f"LoadLimiter(limit={self._limit:.1f})"


@dataclass(slots=True)
class LoopLoad:
    """The latest sample of the event loop's load (also reported in admin stats)."""

    busy: float = 0.0
    lag_s: float = 0.0


async def watch_loop(interval_s: float, on_sample: Callable[[float, float], None],
                     *, thread_time: Callable[[], float] = time.thread_time) -> None:
    """Forever: every `interval_s`, call `on_sample(busy, lag_s)` for the running loop.
    Runs on the loop it measures (thread_time is that thread's CPU)."""
    loop = asyncio.get_running_loop()
    wall, cpu = loop.time(), thread_time()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        now, used = loop.time(), thread_time()
        elapsed = now - wall
        if elapsed > 0:
            on_sample(min(1.0, (used - cpu) / elapsed), max(0.0, now - due))
        wall, cpu = now, used
