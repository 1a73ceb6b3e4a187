"""Cost of admission decisions: what a request pays before any real work.

    .venv/bin/python bench/bench_admission.py [-n 100000]

Prints microseconds per call for each path (best of 3 rounds, to keep a noisy shared machine
out of the figures):

- reject 503 / 429 quota / 429 rate: `reserve` raising, caught by the caller;
- admit: `reserve` + `acquire` + `release` on a free slot (the common case);
- hand-off: `release` granting the next queued slot (fair-queue pop included);
- contended: tasks through a few slots with waiters, timers and task switches (asyncio's own
  cost dominates here).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

from roost.errors import Overloaded
from roost.runtime.admission import AdmissionController, AdmissionLimits, TenantQuota


def best_of(rounds: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(rounds))


def reject(controller: AdmissionController, tenant: str, n: int) -> float:
    reserve = controller.reserve
    start = time.perf_counter()
    for _ in range(n):
        try:  # noqa: SIM105 - the plain try/except a route handler uses, not suppress()'s cost
            reserve(tenant)
        except Overloaded:
            pass
    return (time.perf_counter() - start) / n * 1e6


def bench_reject_server(n: int) -> float:
    controller = AdmissionController(AdmissionLimits(max_running=1, max_queued=0))
    controller.reserve("holder")
    return reject(controller, "t", n)


def bench_reject_quota(n: int) -> float:
    limits = AdmissionLimits(
        max_running=1, max_queued=1000, tenants={"t": TenantQuota(max_queued=1)}
    )
    controller = AdmissionController(limits)
    controller.reserve("holder")
    controller.reserve("t")
    return reject(controller, "t", n)


def bench_reject_rate(n: int) -> float:
    limits = AdmissionLimits(
        max_running=1000, max_queued=0, tenants={"t": TenantQuota(rate=0.001, burst=1)}
    )
    controller = AdmissionController(limits)
    controller.reserve("t")
    return reject(controller, "t", n)


def bench_admit(n: int) -> float:
    async def main() -> float:
        controller = AdmissionController(AdmissionLimits(max_running=1000, max_queued=1000))
        reserve = controller.reserve
        tenants = [f"tenant-{i}" for i in range(16)]
        start = time.perf_counter()
        for i in range(n):
            slot = reserve(tenants[i & 15])
            await slot.acquire()
            slot.release()
        return (time.perf_counter() - start) / n * 1e6

    return asyncio.run(main())


def bench_handoff(n: int) -> float:
    # n running slots, n queued across 16 weighted tenants: each release grants one.
    controller = AdmissionController(
        AdmissionLimits(
            max_running=n,
            max_queued=n,
            tenants={f"tenant-{i}": TenantQuota(weight=1.0 + i % 3) for i in range(16)},
        )
    )
    holders = [controller.reserve("holder") for _ in range(n)]
    queued = [controller.reserve(f"tenant-{i & 15}") for i in range(n)]
    start = time.perf_counter()
    for slot in holders:
        slot.release()
    elapsed = time.perf_counter() - start
    assert all(s.running for s in queued)
    return elapsed / n * 1e6


def bench_contended(n: int) -> float:
    async def main() -> float:
        limits = AdmissionLimits(
            max_running=64,
            max_queued=n,
            tenants={f"tenant-{i}": TenantQuota(weight=1.0 + i % 3) for i in range(4)},
        )
        controller = AdmissionController(limits)
        deadline = time.monotonic() + 3600.0

        async def one(i: int) -> None:
            async with controller.reserve(f"tenant-{i & 3}", deadline=deadline):
                await asyncio.sleep(0)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - start
        assert controller.statistics().running == 0
        return elapsed / n * 1e6

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, rounds = args.n, args.rounds
    rows = [
        ("reject 503 server_full", bench_reject_server, n),
        ("reject 429 tenant_quota", bench_reject_quota, n),
        ("reject 429 tenant_rate", bench_reject_rate, n),
        ("admit reserve+acquire+release", bench_admit, n),
        ("hand-off release->next queued", bench_handoff, n),
        ("contended run, 64 slots (asyncio)", bench_contended, max(1, n // 5)),
    ]
    print(f"admission costs, best of {rounds} rounds")
    for name, fn, count in rows:
        micros = best_of(rounds, lambda fn=fn, count=count: fn(count))  # type: ignore[misc]
        print(f"  {name:<36} {micros:8.2f} us/call   ({count} calls)")


if __name__ == "__main__":
    main()
