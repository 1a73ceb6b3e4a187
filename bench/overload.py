"""Overload: offer 3x what the server sustains and check admitted turns stay fast.

    .venv/bin/python bench/overload.py                      # calibrate, then 3x for 20 s
    .venv/bin/python bench/overload.py --capacity 780       # skip the calibration
    .venv/bin/python bench/overload.py --capacity 780 --static --max-running 64

1. Calibrate (skipped with --capacity), on a server with generous limits:
   - capacity: a closed loop of --calibrate-concurrency clients runs reference turns
     (HTTP → model → tool → model → answer, SQLite) against the mock at --latency-ms for
     --calibrate-s; the server's core saturates, and its turns/s is what it sustains;
   - a refusal's CPU: Poisson arrivals at 2x capacity from a tenant whose rate bucket is
     empty (every one a 429 decided by admission) for 3 s.
2. Overload: a fresh server with the admission limits under test: by default the adaptive
   limit (`adaptive = true`, the machine's default max_running as its ceiling), which finds
   the running level itself; with --static, a fixed --max-running. --max-queued defaults to
   0: under *sustained* overload a queue is always full, so every admitted turn waits its
   length (a 64-run queue measured p50 378 ms, p99 837 ms); a queue serves bursts, not
   overload. Poisson arrivals at --factor x capacity for
   --duration-s, each on its own request (an open loop: the server's slowness does not slow
   the offered load), from a lean HTTP client on core 1 beside the mock.

Reports admitted turns' p50/p99 against the floor (two model calls = 2 x latency; target
p99 <= 2 x floor) and the run's own duration (run.started → run.completed, server clock), the
excess answered 503/429 and whether each carried Retry-After, other errors (target 0), server
RSS over time and CPU, the load generator's own lag, and whether the server survived (it must
then exit cleanly on SIGTERM). On a machine shared with other work, p50/p99 are also given
over "quiet" intervals (other work under 20% of a core), with a per-2 s timeline of latency
beside the CPU other work took; `ROOST_BENCH_GC=1` adds the server's GC pauses and
`ROOST_BENCH_PROFILE=out.txt` records it with py-spy. The last line is the result as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from typing import Any

from common import (
    LeanHTTP,
    LoopLag,
    MachineSampler,
    SessionPool,
    Stack,
    Tally,
    add_common_arguments,
    admin_stats,
    admission_toml,
    create_sessions,
    json_turn,
    ms,
    open_loop,
    percentile,
    pin_self,
    print_result,
    print_table,
    quiet_latencies,
    raise_nofile,
    run,
    stop_process,
)

from roost.runtime.admission import AdmissionLimits

# Calibration times refusals with a tenant whose rate bucket never refills.
PROBE_HEADER, PROBE_TENANT = "X-Tenant", "probe"
# Turns in flight per admitted turn/s: a turn spends ~1.1 x floor in the server.
TIME_IN_SERVER = 1.1


async def new_sessions(base: str, count: int, headers: dict[str, str] | None = None) -> list[str]:
    """Sessions made before a measured window, so creating them is not measured."""
    async with LeanHTTP(base) as http:
        return await create_sessions(http, count, headers=headers)


async def closed_loop(base: str, concurrency: int, duration_s: float,
                      ids: list[str]) -> tuple[Tally, float]:
    """`concurrency` clients each running turns back to back for `duration_s`."""
    tally = Tally()
    async with LeanHTTP(base) as http:
        pool = SessionPool(http, ids)
        stop_at = time.perf_counter() + duration_s

        async def client() -> None:
            while time.perf_counter() < stop_at:
                await json_turn(http, pool, tally, time.perf_counter())

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return tally, elapsed


async def poisson(base: str, rate: float, duration_s: float, ids: list[str], *,
                  headers: dict[str, str] | None = None, reuse: bool = False,
                  seed: int = 7) -> tuple[Tally, float, dict[str, Any], LoopLag]:
    """Poisson arrivals of reference turns; `reuse` hands out the same sessions forever
    (for refusals, which never use one up)."""
    tally = Tally()
    async with LeanHTTP(base) as http:
        pool = SessionPool(http, ids, headers=headers)

        async def fire(scheduled: float) -> None:
            if reuse and not pool.idle:
                pool.idle.extend((sid, 0) for sid in ids)
            await json_turn(http, pool, tally, scheduled, headers=headers)

        async with LoopLag() as lag:
            offered_for = await open_loop(rate, duration_s, fire, seed=seed)
        stats = await admin_stats(http)
        tally.sessions_created_on_demand = pool.created_on_demand
    return tally, offered_for, stats, lag


def calibrate(args: argparse.Namespace, floor_s: float) -> dict[str, Any]:
    """What the server sustains, and what a refusal and an admitted turn cost it in CPU."""
    generous = admission_toml(max_running=4096, max_queued=4096,
                              tenants={PROBE_TENANT: {"rate": 0.001, "burst": 1}})
    probe = {PROBE_HEADER: PROBE_TENANT}
    with Stack(latency_ms=args.latency_ms, nice=args.nice, config=generous, store=args.store,
               server_section=f'tenant_header = "{PROBE_HEADER}"') as stack:
        base = stack.base
        run(closed_loop(base, 16, 2.0, run(new_sessions(base, 50))))  # warm-up
        ids = run(new_sessions(base, math.ceil(args.calibrate_concurrency * args.calibrate_s
                                               * 10 / 3) + 64))
        with MachineSampler(stack) as saturated:
            tally, elapsed = run(closed_loop(base, args.calibrate_concurrency,
                                             args.calibrate_s, ids))
        capacity = tally.completed / elapsed

        probe_ids = run(new_sessions(base, 64, probe))
        run(poisson(base, 200, 0.5, probe_ids, headers=probe, reuse=True))  # spend the burst
        with MachineSampler(stack) as refusing:
            refused, *_ = run(poisson(base, 2 * capacity, 3.0, probe_ids, headers=probe,
                                      reuse=True))
        refusal_cpu_s = refusing.server.cpu_s / max(refused.rejections, 1)
        turn_cpu_s = saturated.server.cpu_s / max(tally.completed, 1)
    return {
        "turns_per_s": round(capacity, 1),
        "server_cpu_percent": round(saturated.server.cpu_percent, 1),
        "cpu_ms_per_turn_saturated": round(turn_cpu_s * 1000, 3),
        "p50_ms": ms(percentile(tally.latencies, 0.5)),
        "p99_ms": ms(percentile(tally.latencies, 0.99)),
        "errors": len(tally.errors) + len(refused.errors),
        "concurrency": args.calibrate_concurrency,
        **saturated.result,
        "refusals": refused.rejections,
        "refusals_per_s": round(refused.rejections / max(refusing.server.seconds, 1e-9), 1),
        "cpu_ms_per_refusal": round(refusal_cpu_s * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--capacity", type=float, default=None,
                        help="turns/s the server sustains (skips calibration)")
    parser.add_argument("--calibrate-concurrency", type=int, default=128)
    parser.add_argument("--calibrate-s", type=float, default=8.0)
    parser.add_argument("--factor", type=float, default=3.0, help="offered load / capacity")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--store", default=None, help="store URL (default: a fresh SQLite file)")
    parser.add_argument("--max-running", type=int, default=None)
    parser.add_argument("--max-queued", type=int, default=0)
    parser.add_argument("--static", action="store_true",
                        help="a fixed running limit (--max-running, required) instead of the "
                             "adaptive one, whose ceiling --max-running is otherwise")
    parser.add_argument("--target-busy", type=float, default=None,
                        help="admission.adaptive_target_busy (default: the server's)")
    parser.add_argument("--max-lag-ms", type=float, default=None,
                        help="admission.adaptive_max_lag_s in ms (default: the server's)")
    add_common_arguments(parser)
    args = parser.parse_args()
    raise_nofile()
    pin_self(nice=args.nice)

    floor_s = 2 * args.latency_ms / 1000
    calibration: dict[str, Any] | None = None
    if args.capacity is None:
        calibration = calibrate(args, floor_s)
        print_table("calibration (generous limits)", calibration.items())
        capacity = float(calibration["turns_per_s"])
    else:
        capacity = args.capacity
    rate = args.factor * capacity
    adaptive = not args.static
    if not adaptive and args.max_running is None:
        parser.error("--static needs --max-running")
    # With adaptive, what `adaptive = true` gives with nothing else set: the machine's
    # default max_running as the ceiling; the limiter finds the level below it.
    max_running = args.max_running or AdmissionLimits.from_machine().max_running
    max_queued = args.max_queued
    # Admitted turns each need a session (three turns apiece, as in the reference).
    admitted_max = min(max_running / (floor_s * TIME_IN_SERVER), capacity)
    sessions = math.ceil(admitted_max * args.duration_s / 3 * 1.5) + max_running + max_queued

    config = admission_toml(max_running=max_running, max_queued=max_queued)
    if adaptive:
        config += "adaptive = true\n"
        if args.target_busy is not None:
            config += f"adaptive_target_busy = {args.target_busy}\n"
        if args.max_lag_ms is not None:
            config += f"adaptive_max_lag_s = {args.max_lag_ms / 1000}\n"
    with Stack(latency_ms=args.latency_ms, nice=args.nice, config=config,
               store=args.store) as stack:
        # Warm-up within the limits, so the counters below are the overload's own.
        run(closed_loop(stack.base, max(1, min(16, max_running)), 2.0,
                        run(new_sessions(stack.base, 50))))
        ids = run(new_sessions(stack.base, sessions))
        with MachineSampler(stack) as machine:
            tally, offered_for, stats, lag = run(poisson(stack.base, rate, args.duration_s,
                                                         ids))
        sampler = machine.server
        alive = stack.alive()
        assert stack.server is not None
        exit_code = stop_process(stack.server)
        crashed = not alive or exit_code not in (0, None)
        if crashed:
            print(stack.server_log_tail())

    summary = tally.summary(floor_s)
    # The machine is shared: turns that arrived while other people's work took little CPU
    # show what the server does when it has its core.
    quiet = quiet_latencies(tally, sampler)
    result: dict[str, Any] = {
        "bench": "overload",
        "store": (args.store or "sqlite").split("://")[0],
        "latency_ms": args.latency_ms,
        "floor_ms": floor_s * 1000,
        "capacity_turns_per_s": capacity,
        "offered_turns_per_s": round(summary["offered"] / offered_for, 1),
        "admitted_turns_per_s": round(tally.completed / offered_for, 1),
        "max_running": max_running,
        "max_queued": max_queued,
        "adaptive": adaptive,
        "adaptive_limit_end": stats.get("limits", {}).get("adaptive_limit"),
        **summary,
        **lag.summary(),
        "p99_target_ms": 2 * floor_s * 1000,
        "p99_met": summary["p99_ms"] <= 2 * floor_s * 1000,
        "quiet_turns": len(quiet),
        "quiet_p50_ms": ms(percentile(quiet, 0.5)),
        "quiet_p99_ms": ms(percentile(quiet, 0.99)),
        "server_rejected": stats["rejected"],
        "server_admitted": stats["admitted"],
        **machine.result,
        "server_cpu_s": round(sampler.cpu_s, 2),
        "rss_mib_start": round(sampler.rss_at(0.0), 1),
        "rss_mib_mid": round(sampler.rss_at(0.5), 1),
        "rss_mib_end": round(sampler.rss_at(1.0), 1),
        "rss_mib_peak": round(sampler.peak_rss_mib, 1),
        "crashed": crashed,
        "server_exit_code": exit_code,
        "calibration": calibration,
    }
    print_table(f"overload ({args.factor:g}x of {capacity:g} turns/s for {args.duration_s:g} s)",
                [(k, v) for k, v in result.items() if k != "calibration"])
    print_table("admitted turns over time (s: count, p50, p99, max ms; run p50, p99 ms)",
                tally.timeline())
    print_table("server over time (s: RSS MiB, server CPU %, others' CPU %, cores busy %)",
                sampler.table())
    if stack.gc_events:
        result["server_gc"] = stack.gc_pauses(*sampler.window)
        print_table("server garbage collection (ROOST_BENCH_GC=1)", result["server_gc"].items())
    for error in tally.errors[:5]:
        print("error:", error)
    print_result(result)


if __name__ == "__main__":
    main()
