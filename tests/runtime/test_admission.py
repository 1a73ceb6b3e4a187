from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.errors import (
    ConfigError,
    InvalidInput,
    Overloaded,
    RunCancelled,
    RunTimeout,
    ServerOverloaded,
    TenantOverloaded,
)
from roost.runtime.adaptive import AdaptiveConfig
from roost.runtime.admission import (
    REJECT_REASONS,
    AdmissionController,
    AdmissionLimits,
    Slot,
    TenantQuota,
)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(
    max_running: int = 1,
    max_queued: int = 100,
    *,
    tenants: dict[str, TenantQuota] | None = None,
    default: TenantQuota | None = None,
    adaptive: AdaptiveConfig | None = None,
    clock: Callable[[], float] | None = None,
) -> AdmissionController:
    limits = AdmissionLimits(
        max_running=max_running,
        max_queued=max_queued,
        default_quota=default or TenantQuota(),
        tenants=tenants or {},
        adaptive=adaptive,
    )
    return AdmissionController(limits, clock=clock or FakeClock())


async def waiting(*slots: Slot) -> None:
    """Let tasks reach their `await` inside acquire (no sleeping on the clock)."""
    for _ in range(100):
        if all(s._waiter is not None for s in slots):
            return
        await asyncio.sleep(0)
    raise AssertionError("acquire() never started waiting")


def assert_idle(controller: AdmissionController) -> None:
    stats = controller.statistics()
    assert (stats.running, stats.queued) == (0, 0)
    assert stats.queued_by_priority == {"interactive": 0, "background": 0}
    assert stats.running_by_tenant == {} and stats.queued_by_tenant == {}
    assert len(controller._queue) == 0
    assert controller._tenants == {}  # no per-tenant state left behind


# -- basics --------------------------------------------------------------------------------


async def test_runs_at_once_when_a_slot_is_free() -> None:
    controller = make(max_running=2)
    slot = controller.reserve("a")
    assert slot.running and slot.state == "running"
    await slot.acquire()  # idempotent when running
    await slot.acquire()
    stats = controller.statistics()
    assert (stats.running, stats.queued, stats.admitted) == (1, 0, 1)
    assert stats.running_by_tenant == {"a": 1}
    slot.release()
    assert slot.state == "released"
    assert_idle(controller)


async def test_context_manager_acquires_and_releases() -> None:
    controller = make(max_running=1)
    holder = controller.reserve("a")
    queued = controller.reserve("a")
    assert queued.queued

    async def use() -> bool:
        async with queued as slot:
            return slot.running

    task = asyncio.create_task(use())
    await waiting(queued)
    holder.release()
    assert await task
    assert queued.state == "released"
    assert_idle(controller)


async def test_release_on_error_in_the_body_frees_the_slot() -> None:
    controller = make(adaptive=AdaptiveConfig(initial_limit=1, max_limit=10))
    with pytest.raises(ZeroDivisionError):
        async with controller.reserve("a"):
            1 / 0  # noqa: B018
    assert_idle(controller)


def test_unknown_priority_is_invalid_input() -> None:
    controller = make()
    with pytest.raises(InvalidInput):
        controller.reserve("a", priority="urgent")  # type: ignore[arg-type]


# -- order and fairness --------------------------------------------------------------------


def test_fifo_within_a_tenant() -> None:
    controller = make(max_running=1)
    holder = controller.reserve("a")
    queued = [controller.reserve("a") for _ in range(5)]
    order: list[int] = []
    current = holder
    for _ in queued:
        current.release()  # hands the slot over synchronously
        (current,) = [s for s in queued if s.running]
        order.append(queued.index(current))
    assert order == [0, 1, 2, 3, 4]
    current.release()
    assert_idle(controller)


def test_interactive_before_background() -> None:
    controller = make(max_running=1)
    holder = controller.reserve("a")
    background = [controller.reserve(t, priority="background") for t in ("a", "b")]
    interactive = [controller.reserve(t, priority="interactive") for t in ("b", "c")]
    stats = controller.statistics()
    assert stats.queued_by_priority == {"interactive": 2, "background": 2}
    served: list[Slot] = []
    current = holder
    for _ in range(4):
        current.release()
        (current,) = [s for s in background + interactive if s.running]
        served.append(current)
    assert [s.priority for s in served] == ["interactive"] * 2 + ["background"] * 2
    current.release()
    assert_idle(controller)


@pytest.mark.parametrize(("wa", "wb"), [(1.0, 1.0), (3.0, 1.0)])
def test_tenants_share_dispatches_by_weight(wa: float, wb: float) -> None:
    controller = make(
        max_running=1,
        tenants={"a": TenantQuota(weight=wa), "b": TenantQuota(weight=wb)},
    )
    current = controller.reserve("a")
    slots = {t: [controller.reserve(t) for _ in range(10)] for t in ("a", "b")}
    served: Counter[str] = Counter()
    n = 4000
    for _ in range(n):
        current.release()
        tenant = next(t for t, ss in slots.items() if any(s.running for s in ss))
        current = next(s for s in slots[tenant] if s.running)
        slots[tenant].remove(current)
        slots[tenant].append(controller.reserve(tenant))  # stay backlogged
        served[tenant] += 1
    assert served["a"] / n == pytest.approx(wa / (wa + wb), abs=0.02)


# -- quotas --------------------------------------------------------------------------------


def test_tenant_at_its_running_quota_waits_while_others_run() -> None:
    controller = make(max_running=3, tenants={"a": TenantQuota(max_running=1)})
    a1 = controller.reserve("a")
    a2 = controller.reserve("a")
    assert a1.running and a2.queued  # global room, but "a" is at its quota
    b1 = controller.reserve("b")
    assert b1.running
    b2 = controller.reserve("b")
    assert b2.running
    b3 = controller.reserve("b")
    assert b3.queued  # global limit reached: queued behind a2 in time
    b1.release()
    # The freed slot goes to "b" (a2 would break a's quota), not left idle.
    assert b3.running and a2.queued
    a1.release()
    assert a2.running
    assert controller.statistics().running_by_tenant == {"a": 1, "b": 2}
    for slot in (a2, b2, b3):
        slot.release()
    assert_idle(controller)


def test_tenant_queue_quota_is_a_429_and_others_still_queue() -> None:
    clock = FakeClock()
    controller = make(
        max_running=1,
        tenants={"a": TenantQuota(max_queued=2)},
        clock=clock,
    )
    holder = controller.reserve("b")
    a_queued = [controller.reserve("a") for _ in range(2)]
    with pytest.raises(TenantOverloaded) as err:
        controller.reserve("a")
    assert err.value.status == 429
    assert err.value.reason == "tenant_quota"
    assert 1.0 <= err.value.retry_after <= 30.0
    assert controller.reserve("b").queued  # the server still has room for others
    assert controller.statistics().rejected["tenant_quota"] == 1
    assert controller.statistics().queued_by_tenant == {"a": 2, "b": 1}
    del holder, a_queued


def test_tenant_quota_retry_after_follows_its_own_throughput() -> None:
    clock = FakeClock()
    controller = make(
        max_running=10,
        tenants={"a": TenantQuota(max_running=2, max_queued=3)},
        clock=clock,
    )
    first = [controller.reserve("a") for _ in range(2)]
    clock.advance(8.0)
    for slot in first:
        slot.release()  # average run: 8 s
    running = [controller.reserve("a") for _ in range(2)]
    queued = [controller.reserve("a") for _ in range(3)]
    with pytest.raises(TenantOverloaded) as err:
        controller.reserve("a")
    # Three ahead plus this one, two at a time, 8 s each.
    assert err.value.retry_after == pytest.approx(16.0)
    del running, queued


def test_rate_bucket_allows_the_burst_then_the_rate() -> None:
    clock = FakeClock()
    controller = make(
        max_running=100,
        tenants={"a": TenantQuota(rate=2.0, burst=3)},
        clock=clock,
    )
    slots = [controller.reserve("a") for _ in range(3)]
    with pytest.raises(TenantOverloaded) as err:
        controller.reserve("a")
    assert err.value.status == 429 and err.value.reason == "tenant_rate"
    assert err.value.retry_after == pytest.approx(0.5)
    assert controller.reserve("b").running  # other tenants are not limited
    clock.advance(0.25)
    with pytest.raises(TenantOverloaded) as err:
        controller.reserve("a")
    assert err.value.retry_after == pytest.approx(0.25)
    clock.advance(0.25)
    slots.append(controller.reserve("a"))
    assert controller.statistics().rejected["tenant_rate"] == 2
    for slot in slots:
        slot.release()
    # Idle, but its bucket is not full yet: it must not be forgotten (a free refill).
    assert "a" in controller._tenants
    with pytest.raises(TenantOverloaded):
        controller.reserve("a")


def test_rate_without_burst_allows_one_second_worth() -> None:
    controller = make(max_running=100, default=TenantQuota(rate=5.0))
    for _ in range(5):
        controller.reserve("x")
    with pytest.raises(TenantOverloaded):
        controller.reserve("x")


def test_server_full_is_a_503_with_an_estimated_retry_after() -> None:
    clock = FakeClock()
    controller = make(max_running=2, max_queued=1, clock=clock)
    running = [controller.reserve(t) for t in ("a", "b")]
    queued = controller.reserve("c")
    assert queued.queued
    with pytest.raises(ServerOverloaded) as err:
        controller.reserve("d")
    assert err.value.status == 503 and err.value.reason == "server_full"
    assert err.value.retry_after == 1.0  # no history yet: the floor
    clock.advance(10.0)
    running[0].release()  # a 10 s run; the queued one takes its place
    assert queued.running
    fill = controller.reserve("e")
    with pytest.raises(ServerOverloaded) as err:
        controller.reserve("f")
    # One queued ahead plus this one, two lanes, 10 s per run.
    assert err.value.retry_after == pytest.approx(10.0)
    clock.advance(1000.0)
    running[1].release()
    queued.release()
    controller.reserve("g")
    controller.reserve("h")
    with pytest.raises(ServerOverloaded) as err:
        controller.reserve("i")
    assert isinstance(err.value, Overloaded)
    assert err.value.retry_after == 30.0  # clamped
    assert controller.statistics().rejected["server_full"] == 3
    del fill


def test_zero_queue_rejects_as_soon_as_running_is_full() -> None:
    controller = make(max_running=1, max_queued=0)
    controller.reserve("a")
    with pytest.raises(ServerOverloaded):
        controller.reserve("b")


def test_tenant_quota_is_checked_before_server_capacity() -> None:
    controller = make(max_running=1, max_queued=1, default=TenantQuota(max_queued=1))
    controller.reserve("a")
    controller.reserve("a")
    with pytest.raises(TenantOverloaded):
        controller.reserve("a")  # both limits are hit: the tenant's own comes first
    with pytest.raises(ServerOverloaded):
        controller.reserve("b")


def test_rejections_do_not_create_tenant_state() -> None:
    controller = make(max_running=1, max_queued=0)
    holder = controller.reserve("a")
    for i in range(100):
        with pytest.raises(ServerOverloaded):
            controller.reserve(f"t{i}")
    assert set(controller._tenants) == {"a"}
    holder.release()
    assert_idle(controller)


# -- cancellation, deadlines, release ----------------------------------------------------


async def test_cancelled_in_the_queue_never_starts() -> None:
    controller = make(max_running=1)
    holder = controller.reserve("a")
    slots = [controller.reserve("b") for _ in range(3)]
    tasks = [asyncio.create_task(s.acquire()) for s in slots]
    await waiting(*slots)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with pytest.raises(asyncio.CancelledError):
            await task
    stats = controller.statistics()
    assert stats.queued == 0 and stats.queued_by_tenant == {}
    assert stats.rejected["cancelled_in_queue"] == 3
    assert all(s.state == "cancelled" for s in slots)
    holder.release()
    assert not any(s.running for s in slots)
    assert controller.statistics().admitted == 1
    assert_idle(controller)
    with pytest.raises(RunCancelled):
        await slots[0].acquire()


async def test_deadline_passing_in_the_queue_is_a_run_timeout() -> None:
    # Real time here: the expiry runs on the event loop's timer, not by polling.
    controller = make(max_running=1, clock=time.monotonic)
    holder = controller.reserve("a")
    late = controller.reserve("b", deadline=time.monotonic() + 0.05)
    patient = controller.reserve("b", deadline=time.monotonic() + 60.0)
    patient_task = asyncio.create_task(patient.acquire())
    started = time.monotonic()
    with pytest.raises(RunTimeout):
        await late.acquire()
    assert time.monotonic() - started < 5.0
    assert late.state == "expired"
    stats = controller.statistics()
    assert stats.rejected["deadline_expired"] == 1 and stats.queued == 1
    holder.release()
    await patient_task
    assert patient.running and not late.running
    patient.release()
    assert_idle(controller)
    with pytest.raises(RunTimeout):
        await late.acquire()


async def test_deadline_already_passed() -> None:
    clock = FakeClock()
    controller = make(max_running=1, clock=clock)
    with pytest.raises(RunTimeout):
        controller.reserve("a", deadline=clock.now)
    holder = controller.reserve("a")
    queued = controller.reserve("a", deadline=clock.now + 1.0)
    clock.advance(2.0)
    with pytest.raises(RunTimeout):  # found late on acquire, before waiting
        await queued.acquire()
    assert controller.statistics().rejected["deadline_expired"] == 2
    holder.release()
    assert_idle(controller)


def test_dispatch_never_starts_work_whose_deadline_passed() -> None:
    clock = FakeClock()
    controller = make(max_running=1, clock=clock)
    holder = controller.reserve("a")
    late = controller.reserve("a", deadline=clock.now + 1.0)
    on_time = controller.reserve("a")
    clock.advance(5.0)  # the timer has not fired (nobody is awaiting): dispatch checks
    holder.release()
    assert late.state == "expired" and on_time.running
    assert controller.statistics().rejected["deadline_expired"] == 1
    on_time.release()
    assert_idle(controller)


def test_release_twice_counts_once() -> None:
    controller = make(max_running=1)
    holder = controller.reserve("a")
    q1, q2 = controller.reserve("a"), controller.reserve("a")
    holder.release()
    holder.release()
    assert q1.running and q2.queued  # the second release did not hand out a second slot
    assert controller.statistics().running == 1
    q1.release()
    q1.release()
    assert q2.running
    q2.release()
    q2.release()
    assert_idle(controller)
    assert controller.statistics().admitted == 3


async def test_releasing_a_queued_slot_withdraws_it() -> None:
    controller = make(max_running=1)
    holder = controller.reserve("a")
    queued = controller.reserve("a")
    task = asyncio.create_task(queued.acquire())
    await waiting(queued)
    queued.release()
    with pytest.raises(RunCancelled):
        await task
    assert controller.statistics().rejected["cancelled_in_queue"] == 1
    holder.release()
    assert_idle(controller)


async def test_acquire_from_two_tasks_is_a_bug() -> None:
    controller = make(max_running=1)
    holder = controller.reserve("a")
    queued = controller.reserve("a")
    first = asyncio.create_task(queued.acquire())
    await waiting(queued)
    with pytest.raises(RuntimeError):
        await queued.acquire()
    holder.release()
    await first
    queued.release()
    with pytest.raises(RuntimeError):
        await queued.acquire()  # released: reserve a new one
    assert_idle(controller)


async def test_handoff_to_a_task_being_cancelled_passes_the_slot_on() -> None:
    controller = make(max_running=1)
    holder = controller.reserve("a")
    b, c = controller.reserve("b"), controller.reserve("c")
    tb, tc = asyncio.create_task(b.acquire()), asyncio.create_task(c.acquire())
    await waiting(b, c)
    holder.release()
    assert b.running  # granted: b's future holds its result, its task has not resumed
    tb.cancel()  # ...and is cancelled in the same instant
    with pytest.raises(asyncio.CancelledError):
        await tb
    assert b.state == "cancelled"
    await tc
    assert c.running
    stats = controller.statistics()
    assert stats.running == 1 and stats.admitted == 2  # holder and c: b's grant was undone
    assert stats.rejected["cancelled_in_queue"] == 1
    c.release()
    assert_idle(controller)


async def test_cancel_before_handoff_skips_the_dead_waiter() -> None:
    controller = make(max_running=1)
    holder = controller.reserve("a")
    b, c = controller.reserve("b"), controller.reserve("c")
    tb, tc = asyncio.create_task(b.acquire()), asyncio.create_task(c.acquire())
    await waiting(b, c)
    tb.cancel()  # b's future is cancelled now; its task withdraws only when it resumes
    holder.release()
    assert b.state == "cancelled" and c.running
    with pytest.raises(asyncio.CancelledError):
        await tb
    await tc
    assert controller.statistics().rejected["cancelled_in_queue"] == 1
    c.release()
    assert_idle(controller)


async def test_expiry_racing_with_cancellation_logs_nothing() -> None:
    controller = make(max_running=1)
    holder = controller.reserve("a")
    queued = controller.reserve("a", deadline=controller._clock() + 60.0)
    task = asyncio.create_task(queued.acquire())
    await waiting(queued)
    controller._expire(queued)  # the timer fires...
    task.cancel()  # ...as the task is cancelled
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queued.state == "expired"
    holder.release()
    assert_idle(controller)


# -- hot reload and adaptive --------------------------------------------------------------


def test_update_limits_dispatches_and_leaves_running_work_alone() -> None:
    controller = make(max_running=2, tenants={"a": TenantQuota(max_running=1)})
    running = [controller.reserve("a"), controller.reserve("b")]
    queued = [controller.reserve("a"), controller.reserve("b"), controller.reserve("c")]
    controller.update_limits(AdmissionLimits(max_running=5, max_queued=100))
    # More room, and "a" lost its quota: everything queued runs.
    assert all(s.running for s in queued)
    controller.update_limits(AdmissionLimits(max_running=1, max_queued=0))
    assert controller.statistics().running == 5  # lowering never stops running work
    with pytest.raises(ServerOverloaded):
        controller.reserve("z")
    for slot in running + queued:
        slot.release()
    assert_idle(controller)
    assert controller.statistics().running_limit == 1


def test_update_limits_reconfigures_rate_buckets() -> None:
    clock = FakeClock()
    controller = make(max_running=100, default=TenantQuota(rate=1.0, burst=1), clock=clock)
    controller.reserve("a").release()
    with pytest.raises(TenantOverloaded):
        controller.reserve("a")
    controller.update_limits(AdmissionLimits(max_running=100, max_queued=10))
    controller.reserve("a").release()  # no rate any more
    controller.update_limits(
        AdmissionLimits(max_running=100, max_queued=10, default_quota=TenantQuota(rate=1.0))
    )
    slot = controller.reserve("a")  # a fresh bucket starts full
    with pytest.raises(TenantOverloaded):
        controller.reserve("a")
    controller.update_limits(
        AdmissionLimits(
            max_running=100, max_queued=10, default_quota=TenantQuota(rate=100.0, burst=5)
        )
    )
    clock.advance(0.015)
    slot.release()
    controller.reserve("a").release()  # refilled at the new rate


def test_tenant_quota_lowered_blocks_dispatch() -> None:
    controller = make(max_running=5)
    a1, a2 = controller.reserve("a"), controller.reserve("a")
    controller.update_limits(
        AdmissionLimits(max_running=2, max_queued=10, tenants={"a": TenantQuota(max_running=1)})
    )
    a3, b1 = controller.reserve("a"), controller.reserve("b")
    assert a3.queued and b1.queued
    a1.release()
    assert b1.running and a3.queued  # "a" still has 1 running: its quota
    a2.release()
    assert a3.running


def test_adaptive_limit_replaces_max_running() -> None:
    config = AdaptiveConfig(initial_limit=2, min_limit=1, max_limit=20)
    controller = make(max_running=1000, adaptive=config)
    slots = [controller.reserve("a") for _ in range(30)]
    assert sum(s.running for s in slots) == 2  # not 1000
    assert controller.statistics().running_limit == 2
    # A quiet loop with work waiting: the limit grows, and queued work starts as it does.
    for _ in range(40):
        controller.on_load(0.2, 0.001)
    stats = controller.statistics()
    assert stats.running_limit == 20 and stats.running == 20
    assert stats.adaptive_limit == pytest.approx(20.0)
    assert (stats.loop_busy, stats.loop_lag_s) == (0.2, 0.001)
    # The loop saturates: the limit falls; running work finishes, and is replaced only up to it.
    for _ in range(5):
        controller.on_load(0.95, 0.002)
    stats = controller.statistics()
    assert 1 <= stats.running_limit < 20 and stats.running == 20  # nothing is preempted
    slots += [controller.reserve("a") for _ in range(20)]  # 30 waiting now
    for slot in [s for s in slots if s.running]:
        slot.release()
    stats = controller.statistics()
    assert stats.running == stats.running_limit and stats.queued == 30 - stats.running_limit
    # Lag alone (the core taken by something else) cuts it too.
    before = stats.adaptive_limit
    controller.on_load(0.1, 0.5)
    assert controller.statistics().adaptive_limit == pytest.approx(0.9 * before)
    # Turning it off restores max_running.
    controller.update_limits(AdmissionLimits(max_running=1000, max_queued=100))
    assert controller.statistics().adaptive_limit is None
    assert all(s.running for s in slots if s.state != "released")


def test_without_adaptive_load_is_only_recorded() -> None:
    controller = make(max_running=3)
    controller.on_load(0.99, 1.0)
    stats = controller.statistics()
    assert stats.running_limit == 3 and stats.adaptive_limit is None
    assert stats.loop_busy == 0.99


def test_update_limits_keeps_the_adaptive_estimate() -> None:
    controller = make(adaptive=AdaptiveConfig(initial_limit=7, max_limit=50))
    controller.update_limits(
        AdmissionLimits(max_running=1, max_queued=1, adaptive=AdaptiveConfig(max_limit=100))
    )
    assert controller.statistics().running_limit == 7  # no step change on reload


# -- limits objects ------------------------------------------------------------------------


def test_from_machine_defaults() -> None:
    assert AdmissionLimits.from_machine(cpu_count=1).max_running == 256
    big = AdmissionLimits.from_machine(cpu_count=64)
    assert big.max_running == 1024 and big.max_queued == 2048
    here = AdmissionLimits.from_machine()
    assert 256 <= here.max_running <= 1024 and here.max_queued == 2 * here.max_running
    assert AdmissionController(here).statistics().running_limit == here.max_running


def test_limits_are_frozen_copies() -> None:
    tenants = {"a": TenantQuota(weight=2.0)}
    limits = AdmissionLimits(max_running=1, max_queued=0, tenants=tenants)
    tenants["b"] = TenantQuota()
    assert "b" not in limits.tenants
    assert limits.quota("a").weight == 2.0 and limits.quota("zzz") == TenantQuota()


@pytest.mark.parametrize(
    "build",
    [
        lambda: AdmissionLimits(max_running=0, max_queued=0),
        lambda: AdmissionLimits(max_running=1, max_queued=-1),
        lambda: TenantQuota(max_running=0),
        lambda: TenantQuota(max_queued=-1),
        lambda: TenantQuota(rate=0.0),
        lambda: TenantQuota(rate=float("nan")),
        lambda: TenantQuota(rate=1.0, burst=0),
        lambda: TenantQuota(burst=5),
        lambda: TenantQuota(weight=0.0),
    ],
)
def test_bad_limits_are_config_errors(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        build()


def test_statistics_report_every_reason() -> None:
    stats = make().statistics()
    assert set(stats.rejected) == set(REJECT_REASONS)
    assert stats.limits.max_running == 1 and stats.max_queued == 100
    assert "AdmissionController" in repr(make()) and "Slot" in repr(make().reserve("a"))


# -- property: no interleaving loses or duplicates a slot ----------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 3), st.sampled_from([0, 0, 1, 2])),
        st.tuples(st.just("acquire"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("cancel"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("release"), st.integers(0, 7), st.booleans().map(int)),
        st.tuples(st.just("step"), st.integers(1, 3), st.just(0)),
        st.tuples(st.just("advance"), st.integers(1, 3), st.just(0)),
    ),
    min_size=20,
    max_size=100,
)


async def scenario(ops: list[tuple[str, int, int]]) -> None:
    clock = FakeClock()
    quotas = {
        "t0": TenantQuota(max_running=1, max_queued=4, weight=3.0),
        "t1": TenantQuota(max_running=2),
        "t2": TenantQuota(max_queued=2, weight=0.5),
    }
    max_running = 3
    controller = make(max_running=max_running, max_queued=6, tenants=quotas, clock=clock)
    slots: list[Slot] = []
    tasks: dict[int, asyncio.Task[None]] = {}
    ever_running: set[int] = set()
    rejected_at_reserve = 0
    seq = itertools.count()

    def check() -> None:
        running = [s for s in slots if s.running]
        queued = [s for s in slots if s.queued]
        stats = controller.statistics()
        assert stats.running == len(running) <= max_running
        assert stats.queued == len(queued)
        for tenant, quota in quotas.items():
            n = sum(1 for s in running if s.tenant == tenant)
            assert n == stats.running_by_tenant.get(tenant, 0)
            assert quota.max_running is None or n <= quota.max_running
        # Work-conserving: a free slot means all queued work is held by its tenant's quota.
        if len(running) < max_running:
            for s in queued:
                cap = quotas.get(s.tenant, TenantQuota()).max_running
                assert cap is not None and stats.running_by_tenant.get(s.tenant, 0) >= cap
        for i, s in enumerate(slots):
            if s.running:
                ever_running.add(i)
            elif s.queued:
                assert i not in ever_running  # never back to the queue

    for op, a, b in ops:
        if op == "reserve":
            deadline = None if b == 0 else clock.now + b
            try:
                slots.append(
                    controller.reserve(
                        f"t{a}",
                        priority="interactive" if next(seq) % 3 else "background",
                        deadline=deadline,
                    )
                )
            except (Overloaded, RunTimeout):
                rejected_at_reserve += 1
        elif op == "acquire":
            # Pick among slots nobody awaits yet, so most draws do something.
            free = [i for i, s in enumerate(slots) if i not in tasks and s.state == "queued"]
            if free:
                i = free[a % len(free)]
                tasks[i] = asyncio.create_task(slots[i].acquire())
        elif op == "cancel":
            live = [task for task in tasks.values() if not task.done()]
            if live:
                live[a % len(live)].cancel()
        elif op == "release" and slots:
            # Mostly a running slot (a run ending); sometimes any slot (abandon, twice).
            pool = [s for s in slots if s.running] if b else slots
            if pool:
                pool[a % len(pool)].release()
        elif op == "step":
            for _ in range(a):
                await asyncio.sleep(0)
        elif op == "advance":
            clock.advance(a)
        check()

    # Every acquire ended consistently with its slot's fate.
    for task in tasks.values():
        task.cancel()
    for i, task in tasks.items():
        try:
            await task
        except asyncio.CancelledError:
            # "queued": cancelled before its first step, so it never got to wait.
            assert slots[i].state in ("queued", "cancelled", "running", "released", "expired")
        except RunTimeout:
            assert slots[i].state == "expired"
        except RunCancelled:
            assert slots[i].state == "cancelled"
        except RuntimeError:
            assert slots[i].state == "released"  # its task first ran after the release
        check()
    # Drain: release everything until nothing runs or waits.
    while any(s.running or s.queued for s in slots):
        for s in slots:
            s.release()
        check()
    assert_idle(controller)
    stats = controller.statistics()
    states = Counter(s.state for s in slots)
    assert stats.admitted == states["released"]
    # Each reserved slot ended exactly once: released after running, or never started.
    late_at_reserve = (
        rejected_at_reserve - stats.rejected["server_full"] - stats.rejected["tenant_quota"]
    )
    never_ran = stats.rejected["cancelled_in_queue"] + stats.rejected["deadline_expired"]
    assert never_ran == states["cancelled"] + states["expired"] + late_at_reserve
    assert stats.rejected["tenant_rate"] == 0


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_property_no_interleaving_loses_or_duplicates_a_slot(
    ops: list[tuple[str, int, int]],
) -> None:
    asyncio.run(scenario(ops))
