"""Admission control: decide at once whether a run may start, wait, or be refused.

`reserve` is synchronous and cheap (a few microseconds): it checks, in order, the deadline,
the tenant's queue quota (429), the global running + queued capacity (503) and the tenant's
rate bucket (429), and returns a `Slot` that is either running already or queued. Nothing is
awaited between the checks and the registration, so two requests never race for one place.

    slot = controller.reserve(tenant, priority="interactive", deadline=loop_deadline)
    async with slot:              # waits in the queue if needed: RunTimeout past the deadline
        await run_the_turn()      # running; the slot is released (and handed on) on exit

The queue is served by strict priority (interactive before background), then weighted-fair
between tenants (see `fair_queue`), then FIFO within a tenant. A tenant at its running quota is
skipped while others are served. A freed slot is handed directly to the next waiter, so a slot
is never idle while eligible work waits, and never granted twice:

- a waiter cancelled (client gone) or past its deadline leaves the queue at once, never
  started (counted as `cancelled_in_queue` / `deadline_expired`);
- a waiter granted a slot while its task is being cancelled passes the slot on;
- `release` is idempotent, and releasing a queued slot withdraws it.

Deadlines are absolute times on the controller's clock (`time.monotonic` by default, the
same clock as the default event loop's `loop.time()`). One timer handle per waiting `acquire`
enforces them -- no polling task -- and dispatch never starts a slot found already late.

Retry-After: for a rate refusal, the time until the bucket holds a token; otherwise an estimate
of the wait (queue ahead / throughput, from an average of recent run durations), within
[1, 30] s.

With `AdmissionLimits.adaptive` set, a limiter fed by the event loop's load (see `adaptive`;
the runtime calls `on_load` every sample) replaces `max_running` as the running limit, which
stays its ceiling.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from roost.errors import (
    ConfigError,
    InvalidInput,
    RunCancelled,
    RunTimeout,
    ServerOverloaded,
    TenantOverloaded,
)
from roost.runtime.adaptive import AdaptiveConfig, LoadLimiter, LoopLoad
from roost.runtime.fair_queue import FairQueue
from roost.runtime.token_bucket import TokenBucket

__all__ = [
    "PRIORITIES",
    "REJECT_REASONS",
    "AdaptiveConfig",
    "AdmissionController",
    "AdmissionLimits",
    "AdmissionStatistics",
    "Priority",
    "RejectReason",
    "Slot",
    "TenantQuota",
]

Priority = Literal["interactive", "background"]
PRIORITIES: Final[tuple[Priority, ...]] = ("interactive", "background")
_CLASS_OF: Final[dict[str, int]] = {p: i for i, p in enumerate(PRIORITIES)}

RejectReason = Literal[
    "server_full", "tenant_quota", "tenant_rate", "deadline_expired", "cancelled_in_queue"
]
REJECT_REASONS: Final[tuple[RejectReason, ...]] = (
    "server_full",
    "tenant_quota",
    "tenant_rate",
    "deadline_expired",
    "cancelled_in_queue",
)

# Retry-After bounds for estimated waits: below 1 s clients hammer; past 30 s the estimate
# is a guess and the client had better try another instance.
RETRY_AFTER_MIN: Final = 1.0
RETRY_AFTER_MAX: Final = 30.0
# Weight of each finished run in the average run duration behind Retry-After estimates.
_DURATION_ALPHA: Final = 0.1


@dataclass(frozen=True, slots=True)
class TenantQuota:
    """One tenant's share. None means "no limit of its own" (the global limits still apply).

    max_running: runs in flight at once; max_queued: runs waiting; rate/burst: a token bucket
    of admitted runs per second (burst defaults to one second's worth, at least 1); weight:
    its share of dispatches when tenants compete for freed slots.

        TenantQuota(max_running=50, max_queued=100, rate=20.0, burst=40, weight=3.0)
    """

    max_running: int | None = None
    max_queued: int | None = None
    rate: float | None = None
    burst: int | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        if self.max_running is not None and self.max_running < 1:
            problems.append(("max_running", "must be at least 1 (or unset)"))
        if self.max_queued is not None and self.max_queued < 0:
            problems.append(("max_queued", "must not be negative"))
        if self.rate is not None and not (self.rate > 0.0 and math.isfinite(self.rate)):
            problems.append(("rate", "must be a positive number of runs per second"))
        if self.burst is not None and self.burst < 1:
            problems.append(("burst", "must be at least 1"))
        if self.burst is not None and self.rate is None:
            problems.append(("burst", "needs a rate"))
        if not (self.weight > 0.0 and math.isfinite(self.weight)):
            problems.append(("weight", "must be a positive number"))
        if problems:
            raise ConfigError("invalid tenant quota", problems)

    @property
    def bucket_size(self) -> float:
        """The burst the token bucket holds (only meaningful with a rate)."""
        if self.burst is not None:
            return float(self.burst)
        return float(max(1, math.ceil(self.rate or 1.0)))


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """Global and per-tenant limits. Immutable: hot reload swaps in a new one.

    AdmissionLimits(max_running=512, max_queued=1024,
                    tenants={"acme": TenantQuota(max_running=100, weight=2.0)})
    """

    max_running: int
    max_queued: int
    default_quota: TenantQuota = field(default_factory=TenantQuota)
    tenants: Mapping[str, TenantQuota] = field(default_factory=dict)
    adaptive: AdaptiveConfig | None = None

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        if self.max_running < 1:
            problems.append(("max_running", "must be at least 1"))
        if self.max_queued < 0:
            problems.append(("max_queued", "must not be negative"))
        if problems:
            raise ConfigError("invalid admission limits", problems)
        # A read-only copy: the caller's dict changing later must not change live limits.
        object.__setattr__(self, "tenants", types.MappingProxyType(dict(self.tenants)))

    def quota(self, tenant: str) -> TenantQuota:
        return self.tenants.get(tenant, self.default_quota)

    @classmethod
    def from_machine(cls, *, cpu_count: int | None = None) -> AdmissionLimits:
        """Defaults sized for this machine.

        A run spends nearly all its life waiting on a model; its CPU cost is ~1.5 ms per turn
        (the performance budget), so one event loop saturates at ~600 turns/s. By Little's law
        at a typical 1-2 s model latency that is ~600-1200 runs in flight; admitting more only
        queues them inside the loop, where they are neither fair nor visible. A process runs
        one event loop, so the number does not grow with cores, but on 1-2 core machines the
        loop shares them with the thread pool (sync tools, SQLite writer), hence 256 per core
        up to 1024. The queue holds two running-sets' worth: ~2 run lengths of waiting
        (a few seconds), beyond which a fast 503 serves the client better than a long wait.
        """
        cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
        max_running = min(1024, 256 * max(1, cpus))
        return cls(max_running=max_running, max_queued=2 * max_running)


@dataclass(frozen=True, slots=True)
class AdmissionStatistics:
    """A snapshot of the controller, for metrics and `/readyz`."""

    running: int
    queued: int
    # The limit in force: the adaptive one when enabled, else `limits.max_running`.
    running_limit: int
    max_queued: int
    adaptive_limit: float | None
    # The event loop's latest load sample (busy fraction, lag): what the adaptive limit
    # follows; measured whether or not it is enabled.
    loop_busy: float
    loop_lag_s: float
    admitted: int
    rejected: Mapping[str, int]
    running_by_tenant: Mapping[str, int]
    queued_by_tenant: Mapping[str, int]
    queued_by_priority: Mapping[str, int]
    limits: AdmissionLimits


class _TenantState:
    """Live counters of one tenant; exists while it has work or a partly drained bucket."""

    __slots__ = ("quota", "running", "queued", "bucket", "blocked")

    def __init__(self, quota: TenantQuota, now: float) -> None:
        self.quota = quota
        self.running = 0
        self.queued = 0
        self.blocked = False
        self.bucket: TokenBucket | None = (
            TokenBucket(quota.rate, quota.bucket_size, now=now) if quota.rate is not None else None
        )

    def idle(self, now: float) -> bool:
        return (
            self.running == 0
            and self.queued == 0
            and (self.bucket is None or self.bucket.is_full(now))
        )


_QUEUED, _RUNNING, _RELEASED, _EXPIRED, _CANCELLED = range(5)
_STATE_NAMES: Final = ("queued", "running", "released", "expired", "cancelled")


class Slot:
    """One admitted run's place: running, or queued for a running slot.

    Use it as an async context manager, or call `acquire()` then `release()` (in a
    `finally`). Created by `AdmissionController.reserve` only.
    """

    __slots__ = (
        "_controller",
        "_ts",
        "tenant",
        "priority",
        "deadline",
        "_klass",
        "_state",
        "_waiter",
        "_started",
    )

    def __init__(
        self,
        controller: AdmissionController,
        ts: _TenantState,
        tenant: str,
        priority: Priority,
        klass: int,
        deadline: float | None,
    ) -> None:
        self._controller = controller
        self._ts = ts
        self.tenant = tenant
        self.priority: Priority = priority
        self.deadline = deadline
        self._klass = klass
        self._state = _QUEUED
        self._waiter: asyncio.Future[None] | None = None
        self._started = 0.0

    @property
    def running(self) -> bool:
        return self._state == _RUNNING

    @property
    def queued(self) -> bool:
        return self._state == _QUEUED

    @property
    def state(self) -> str:
        """One of "queued", "running", "released", "expired", "cancelled"."""
        return _STATE_NAMES[self._state]

    async def acquire(self) -> None:
        """Wait until the slot runs. Returns at once if it already does.

        Raises RunTimeout if the deadline passes first, RunCancelled if the slot was released
        while queued; either way the run never started. If the awaiting task is cancelled,
        the slot leaves the queue (or, if it was granted in that instant, passes to the next
        waiter) and CancelledError propagates.
        """
        state = self._state
        if state == _RUNNING:
            return
        if state != _QUEUED:
            raise self._controller._ended_error(self)
        if self._waiter is not None:
            raise RuntimeError("Slot.acquire() is already being awaited by another task")
        controller = self._controller
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None
        if self.deadline is not None:
            delay = self.deadline - controller._clock()
            if delay <= 0.0:
                controller._expire(self)
                raise controller._ended_error(self)
            timer = loop.call_later(delay, controller._expire, self)
        # Registered before the first await: a release that runs while we wait finds us.
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        except asyncio.CancelledError:
            if self._state == _RUNNING:
                # Granted, but our task was cancelled before it could resume: the run will
                # never start, so the slot goes to the next waiter instead of leaking.
                controller._rescind(self)
            elif self._state == _QUEUED:
                controller._withdraw(self, "cancelled_in_queue")
            raise
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
            if waiter.done() and not waiter.cancelled():
                # Mark a RunTimeout/RunCancelled set in the same instant as a cancellation as
                # retrieved, so asyncio does not log "exception was never retrieved".
                waiter.exception()

    def release(self) -> None:
        """Give the slot back. Safe to call more than once; only the first call counts.

        On a running slot: frees it and hands it to the next queued slot. On a queued slot:
        withdraws it; a task in `acquire` gets RunCancelled.
        """
        state = self._state
        if state == _RUNNING:
            self._controller._finish(self)
        elif state == _QUEUED:
            self._controller._withdraw(self, "cancelled_in_queue")

    async def __aenter__(self) -> Slot:
        await self.acquire()
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Slot tenant={self.tenant!r} priority={self.priority} {self.state}>"


class AdmissionController:
    """Admits runs within global and per-tenant limits; see the module docstring.

        controller = AdmissionController(AdmissionLimits.from_machine())
        try:
            slot = controller.reserve("acme")
        except Overloaded as exc:           # ServerOverloaded (503) / TenantOverloaded (429)
            return problem(exc, retry_after=exc.retry_after)
        async with slot:
            ...

    Single-threaded: call it from one event loop. `reserve` and `release` never await.
    """

    def __init__(
        self, limits: AdmissionLimits, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._limits = limits
        self._tenants: dict[str, _TenantState] = {}
        self._tenant_sweep_at = 1024
        self._queue: FairQueue[Slot] = FairQueue(len(PRIORITIES), weight=self._weight)
        self._running = 0
        self._admitted = 0
        self._rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self._avg_run_s: float | None = None
        self._limiter: LoadLimiter | None = (
            LoadLimiter(limits.adaptive) if limits.adaptive is not None else None
        )
        self._load = LoopLoad()
        self._running_limit = self._current_limit()

    @property
    def limits(self) -> AdmissionLimits:
        return self._limits

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return len(self._queue)

    def reserve(
        self,
        tenant: str,
        *,
        priority: Priority = "interactive",
        deadline: float | None = None,
    ) -> Slot:
        """Decide now: a running or queued `Slot`, or an exception.

        Raises TenantOverloaded (429: the tenant's queue quota or rate), ServerOverloaded
        (503: global running and queue full), RunTimeout (the deadline, on this controller's
        clock, already passed) or InvalidInput (unknown priority).
        """
        klass = _CLASS_OF.get(priority)
        if klass is None:
            raise InvalidInput(f"unknown priority {priority!r}", field="priority")
        now = self._clock()
        if deadline is not None and deadline <= now:
            self._rejected["deadline_expired"] += 1
            raise RunTimeout("the run's deadline passed before it was admitted")
        ts = self._tenants.get(tenant)
        quota = ts.quota if ts is not None else self._limits.quota(tenant)
        t_running = ts.running if ts is not None else 0
        # Dispatch keeps the invariant "a free slot means everything queued is blocked by its
        # tenant's quota", so a free slot plus a tenant under quota means nobody eligible is
        # queued ahead: run now.
        runs_now = self._running < self._running_limit and (
            quota.max_running is None or t_running < quota.max_running
        )
        if not runs_now:
            t_queued = ts.queued if ts is not None else 0
            if quota.max_queued is not None and t_queued >= quota.max_queued:
                self._rejected["tenant_quota"] += 1
                raise TenantOverloaded(
                    f"tenant {tenant!r} has too much work waiting",
                    retry_after=self._estimate_wait(t_queued, quota.max_running),
                    reason="tenant_quota",
                )
            if len(self._queue) >= self._limits.max_queued:
                self._rejected["server_full"] += 1
                raise ServerOverloaded(
                    "the server is at capacity",
                    retry_after=self._estimate_wait(len(self._queue), None),
                    reason="server_full",
                )
        if ts is None:
            ts = self._new_tenant(tenant, quota, now)
        bucket = ts.bucket
        if bucket is not None:
            wait = bucket.try_take(now)
            if wait:
                self._rejected["tenant_rate"] += 1
                raise TenantOverloaded(
                    f"tenant {tenant!r} is over its rate limit",
                    retry_after=wait,
                    reason="tenant_rate",
                )
        slot = Slot(self, ts, tenant, priority, klass, deadline)
        if runs_now:
            self._start(slot, now)
        else:
            ts.queued += 1
            self._queue.push(slot, tenant, klass)
        return slot

    def on_load(self, busy: float, lag_s: float) -> None:
        """One sample of the event loop's load (see `adaptive.watch_loop`): recorded, and
        fed to the adaptive limiter when there is one."""
        self._load = LoopLoad(busy, lag_s)
        if self._limiter is None:
            return
        wanting = bool(self._queue) or self._running >= self._running_limit
        limit = self._limiter.on_load(busy, lag_s, wanting=wanting)
        if limit != self._running_limit:
            self._running_limit = limit
            self._dispatch(self._clock())

    def update_limits(self, limits: AdmissionLimits) -> None:
        """Hot reload. Running work is unaffected; queued work stays queued (even past a
        lowered `max_queued`) and is dispatched under the new limits."""
        now = self._clock()
        old = self._limits
        self._limits = limits
        for tenant, ts in list(self._tenants.items()):
            quota = limits.quota(tenant)
            if quota.rate is None:
                ts.bucket = None
            elif ts.bucket is None:
                ts.bucket = TokenBucket(quota.rate, quota.bucket_size, now=now)
            else:
                ts.bucket.reconfigure(quota.rate, quota.bucket_size, now=now)
            ts.quota = quota
            self._sync_blocked(tenant, ts)
            if ts.idle(now):
                del self._tenants[tenant]
        if limits.adaptive != old.adaptive:
            if limits.adaptive is None:
                self._limiter = None
            else:
                # Start from what is in force now: a reload should not cause a step change.
                start = self._limiter.estimate if self._limiter else float(self._running_limit)
                self._limiter = LoadLimiter(limits.adaptive, initial_limit=start)
        self._running_limit = self._current_limit()
        self._dispatch(now)

    def statistics(self) -> AdmissionStatistics:
        running_by_tenant: dict[str, int] = {}
        queued_by_tenant: dict[str, int] = {}
        for tenant, ts in self._tenants.items():
            if ts.running:
                running_by_tenant[tenant] = ts.running
            if ts.queued:
                queued_by_tenant[tenant] = ts.queued
        return AdmissionStatistics(
            running=self._running,
            queued=len(self._queue),
            running_limit=self._running_limit,
            max_queued=self._limits.max_queued,
            adaptive_limit=self._limiter.estimate if self._limiter is not None else None,
            loop_busy=self._load.busy,
            loop_lag_s=self._load.lag_s,
            admitted=self._admitted,
            rejected=dict(self._rejected),
            running_by_tenant=running_by_tenant,
            queued_by_tenant=queued_by_tenant,
            queued_by_priority={p: self._queue.count(i) for i, p in enumerate(PRIORITIES)},
            limits=self._limits,
        )

    # -- internals: every transition of a slot's state goes through one of these ----------

    def _weight(self, tenant: str) -> float:
        ts = self._tenants.get(tenant)
        return (ts.quota if ts is not None else self._limits.quota(tenant)).weight

    def _current_limit(self) -> int:
        if self._limiter is not None:
            return self._limiter.limit
        return self._limits.max_running

    def _new_tenant(self, tenant: str, quota: TenantQuota, now: float) -> _TenantState:
        if len(self._tenants) >= self._tenant_sweep_at:
            # Tenants idle but for a refilling bucket linger until touched; sweep them in
            # bulk, amortised O(1) per new tenant.
            for name in [n for n, s in self._tenants.items() if s.idle(now)]:
                del self._tenants[name]
            self._tenant_sweep_at = max(1024, 2 * len(self._tenants))
        ts = self._tenants[tenant] = _TenantState(quota, now)
        return ts

    def _forget_if_idle(self, ts: _TenantState, tenant: str, now: float) -> None:
        if ts.idle(now) and self._tenants.get(tenant) is ts:
            del self._tenants[tenant]

    def _sync_blocked(self, tenant: str, ts: _TenantState) -> None:
        cap = ts.quota.max_running
        at_cap = cap is not None and ts.running >= cap
        if at_cap != ts.blocked:
            ts.blocked = at_cap
            if at_cap:
                self._queue.block(tenant)
            else:
                self._queue.unblock(tenant)

    def _start(self, slot: Slot, now: float) -> None:
        ts = slot._ts
        slot._state = _RUNNING
        slot._started = now
        self._running += 1
        self._admitted += 1
        ts.running += 1
        cap = ts.quota.max_running
        if cap is not None and ts.running >= cap and not ts.blocked:
            ts.blocked = True
            self._queue.block(slot.tenant)

    def _stop(self, slot: Slot, state: int) -> None:
        """Running -> `state`: the counters drop and the tenant may become eligible again."""
        ts = slot._ts
        slot._state = state
        self._running -= 1
        ts.running -= 1
        if ts.blocked:
            self._sync_blocked(slot.tenant, ts)

    def _finish(self, slot: Slot) -> None:
        now = self._clock()
        self._stop(slot, _RELEASED)
        held = max(0.0, now - slot._started)
        avg = self._avg_run_s
        self._avg_run_s = held if avg is None else avg + (held - avg) * _DURATION_ALPHA
        self._dispatch(now)
        self._forget_if_idle(slot._ts, slot.tenant, now)

    def _rescind(self, slot: Slot) -> None:
        """A grant whose task was cancelled before it resumed: undo it, pass the slot on."""
        now = self._clock()
        self._stop(slot, _CANCELLED)
        self._admitted -= 1
        self._rejected["cancelled_in_queue"] += 1
        self._dispatch(now)
        self._forget_if_idle(slot._ts, slot.tenant, now)

    def _withdraw(self, slot: Slot, reason: RejectReason) -> None:
        """Queued -> cancelled or expired, never started."""
        self._queue.remove(slot, slot.tenant, slot._klass)
        self._leave_queue(slot, _EXPIRED if reason == "deadline_expired" else _CANCELLED, reason)
        waiter = slot._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._ended_error(slot))
        self._forget_if_idle(slot._ts, slot.tenant, self._clock())

    def _expire(self, slot: Slot) -> None:
        # Timer callback (or acquire finding the deadline gone): a no-op unless still queued.
        if slot._state == _QUEUED:
            self._withdraw(slot, "deadline_expired")

    def _leave_queue(self, slot: Slot, state: int, reason: RejectReason) -> None:
        slot._state = state
        slot._ts.queued -= 1
        self._rejected[reason] += 1

    def _dispatch(self, now: float) -> None:
        """Hand free slots to queued work until no slot is free or nothing queued can run."""
        queue = self._queue
        while self._running < self._running_limit:
            slot = queue.pop()
            if slot is None:
                return
            waiter = slot._waiter
            if waiter is not None and waiter.done():
                # Its task was cancelled and has not resumed yet to withdraw itself.
                self._leave_queue(slot, _CANCELLED, "cancelled_in_queue")
            elif slot.deadline is not None and slot.deadline <= now:
                # Its timer has not fired yet: never start work that is already late.
                self._leave_queue(slot, _EXPIRED, "deadline_expired")
                if waiter is not None:
                    waiter.set_exception(self._ended_error(slot))
            else:
                slot._ts.queued -= 1
                self._start(slot, now)
                if waiter is not None:
                    waiter.set_result(None)
                continue
            self._forget_if_idle(slot._ts, slot.tenant, now)

    def _estimate_wait(self, ahead: int, lanes: int | None) -> float:
        """Seconds until a place frees for work with `ahead` items before it, served
        `lanes` at a time (default: the running limit), from the average run duration."""
        avg = self._avg_run_s
        if avg is None:
            return RETRY_AFTER_MIN
        width = lanes if lanes is not None else self._running_limit
        wait = (ahead + 1) * avg / max(1, width)
        return min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, wait))

    def _ended_error(self, slot: Slot) -> Exception:
        state = slot._state
        if state == _EXPIRED:
            return RunTimeout("the run's deadline passed while it was queued")
        if state == _CANCELLED:
            return RunCancelled("the run was withdrawn from the admission queue")
        return RuntimeError(f"slot is {slot.state}; reserve a new one")

    def __repr__(self) -> str:
        return (
            f"<AdmissionController running={self._running}/{self._running_limit}"
            f" queued={len(self._queue)}/{self._limits.max_queued}>"
        )


class InheritedSlot(Slot):
    """The slot of a child run: it runs on its parent's (which is held while the child runs),
    so acquiring and releasing it are no-ops and it is never queued."""

    __slots__ = ()

    def __init__(self) -> None:  # no controller: nothing is counted twice
        self._state = _RUNNING

    async def acquire(self) -> None:
        return None

    def release(self) -> None:
        return None
