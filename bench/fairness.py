"""Fairness: a tenant flooding past its quota must not slow a well-behaved one.

    .venv/bin/python bench/fairness.py                      # quota 60 turns/s, 20 s phases
    .venv/bin/python bench/fairness.py --rate 40 --duration-s 30

Tenants `a` and `b` (from the `X-Tenant` header) get the same quota: --rate turns/s (token
bucket, burst of a fifth of a second's worth), max_running and max_queued sized from it. Both
offer Poisson arrivals of reference turns (model latency --latency-ms):

1. baseline: b alone at --b-share x its rate;
2. contended: a at --a-factor x its rate (10x: nine in ten of its turns are refused 429)
   and b exactly as before (same arrival times), at the same time;
3. b alone again: the spread between the two baselines shows the measurement's noise.

Target: b's p99 in (2) within 10% of its p99 in (1). a's refusals are counted, with whether
each carried Retry-After. On a machine shared with other work, b's p99 is also given over
"quiet" intervals only (other work under 20% of a core); `ROOST_BENCH_GC=1` adds the server's
garbage-collection pauses per phase (`=freeze` tries `gc.freeze()` after start-up). The last
line is the result as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from typing import Any

from common import (
    LeanHTTP,
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
)

TENANT_HEADER = "X-Tenant"


def tenant_quota(rate: float, latency_ms: float) -> dict[str, float | int]:
    """A quota where the rate is the binding limit: max_running leaves room for bursts (4x
    the turns a steady `rate` keeps in flight), and the queue as much again."""
    in_flight = rate * 2 * latency_ms / 1000
    max_running = max(4, math.ceil(4 * in_flight))
    return {"rate": rate, "burst": max(1, math.ceil(rate / 5)), "max_running": max_running,
            "max_queued": max_running}


async def phase(base: str, offers: dict[str, float], duration_s: float,
                sessions: dict[str, int], seed: int) -> tuple[dict[str, Tally], dict[str, Any]]:
    """Each tenant in `offers` sends Poisson arrivals at its rate, concurrently."""
    tallies = {name: Tally() for name in offers}
    async with LeanHTTP(base) as http:
        pools: dict[str, SessionPool] = {}
        for name in offers:
            headers = {TENANT_HEADER: name}
            ids = await create_sessions(http, sessions[name], headers=headers)
            pools[name] = SessionPool(http, ids, headers=headers)

        def firer(name: str) -> Any:
            headers = {TENANT_HEADER: name}

            async def fire(scheduled: float) -> None:
                await json_turn(http, pools[name], tallies[name], scheduled, headers=headers)

            return fire

        await asyncio.gather(*(open_loop(rate, duration_s, firer(name), seed=seed + i)
                               for i, (name, rate) in enumerate(offers.items())))
        stats = await admin_stats(http)
    return tallies, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--rate", type=float, default=60.0, help="each tenant's quota, turns/s")
    parser.add_argument("--a-factor", type=float, default=10.0, help="a's offer / its quota")
    parser.add_argument("--b-share", type=float, default=0.5, help="b's offer / its quota")
    parser.add_argument("--duration-s", type=float, default=20.0)
    add_common_arguments(parser)
    args = parser.parse_args()
    raise_nofile()
    pin_self(nice=args.nice)

    quota = tenant_quota(args.rate, args.latency_ms)
    # The global limits stay out of the way: only the tenants' quotas bind.
    config = admission_toml(max_running=1024, max_queued=1024,
                            tenants={"a": quota, "b": quota})
    b_rate, a_rate = args.b_share * args.rate, args.a_factor * args.rate
    b_sessions = math.ceil(b_rate * args.duration_s / 3 * 1.3) + 16
    a_sessions = math.ceil(args.rate * args.duration_s / 3 * 1.5) + int(quota["max_running"])
    floor_s = 2 * args.latency_ms / 1000
    with Stack(latency_ms=args.latency_ms, nice=args.nice, config=config,
               server_section=f'tenant_header = "{TENANT_HEADER}"') as stack:
        # Warm-up on a third tenant: imports, pools, caches; leaves a's and b's buckets full.
        run(phase(stack.base, {"warmup": 30.0}, 2.0, {"warmup": 32}, seed=1))
        with MachineSampler(stack) as alone_machine:
            alone, _ = run(phase(stack.base, {"b": b_rate}, args.duration_s,
                                 {"b": b_sessions}, seed=11))
        with MachineSampler(stack) as both_machine:
            both, stats = run(phase(stack.base, {"a": a_rate, "b": b_rate}, args.duration_s,
                                    {"a": a_sessions, "b": b_sessions}, seed=11))
        # b alone once more, after a: the spread between the two baselines is the noise
        # floor the 10% target is read against (and a's buckets refill in between).
        with MachineSampler(stack) as again_machine:
            again, _ = run(phase(stack.base, {"b": b_rate}, args.duration_s,
                                 {"b": b_sessions}, seed=11))
        crashed = not stack.alive()

    b_alone, b_both, a_both = (alone["b"].summary(floor_s), both["b"].summary(floor_s),
                               both["a"].summary(floor_s))
    b_again = again["b"].summary(floor_s)
    # The machine is shared: b's turns that arrived while other people's work took under
    # QUIET_OTHERS % of a core, per phase, show the comparison without their interference.
    quiet = {name: quiet_latencies(tally, machine.server) for name, tally, machine in
             (("alone", alone["b"], alone_machine), ("with_a", both["b"], both_machine),
              ("alone_again", again["b"], again_machine))}
    quiet_p99 = {name: ms(percentile(values, 0.99)) for name, values in quiet.items()}
    quiet_ratio = quiet_p99["with_a"] / quiet_p99["alone"] if quiet["alone"] else float("nan")
    ratio = b_both["p99_ms"] / b_alone["p99_ms"] if b_alone["p99_ms"] else float("nan")
    result: dict[str, Any] = {
        "bench": "fairness",
        "latency_ms": args.latency_ms,
        "floor_ms": floor_s * 1000,
        "quota": quota,
        "a_offered_per_s": a_rate,
        "b_offered_per_s": b_rate,
        "b_alone": b_alone,
        "b_with_a": b_both,
        "b_alone_after": b_again,
        "a": a_both,
        "a_admitted_per_s": round(a_both["completed"] / args.duration_s, 1),
        "b_p99_ratio": round(ratio, 3),
        "b_p99_within_10pct": ratio <= 1.10,
        "b_quiet_turns": {name: len(values) for name, values in quiet.items()},
        "b_quiet_p99_ms": quiet_p99,
        "b_quiet_p99_ratio": round(quiet_ratio, 3),
        "b_quiet_within_10pct": quiet_ratio <= 1.10,
        "errors": b_alone["errors"] + b_both["errors"] + a_both["errors"] + b_again["errors"],
        "server_rejected": stats["rejected"],
        "machine_alone": alone_machine.result,
        "machine_with_a": both_machine.result,
        "machine_alone_again": again_machine.result,
        "crashed": crashed,
    }
    print_table("b alone", b_alone.items())
    print_table(f"b while a offers {args.a_factor:g}x its quota", b_both.items())
    print_table("a", a_both.items())
    print_table("b alone again (noise check)", b_again.items())
    print_table("verdict", [("b p99 alone (ms)", b_alone["p99_ms"]),
                            ("b p99 with a (ms)", b_both["p99_ms"]),
                            ("b p99 alone again (ms)", b_again["p99_ms"]),
                            ("ratio (with a / first alone)", result["b_p99_ratio"]),
                            ("within 10%", result["b_p99_within_10pct"]),
                            ("quiet-interval p99 (ms)", quiet_p99),
                            ("quiet ratio", result["b_quiet_p99_ratio"]),
                            ("machine alone", alone_machine.result),
                            ("machine with a", both_machine.result),
                            ("machine alone again", again_machine.result)])
    for tally in (alone["b"], both["b"], both["a"], again["b"]):
        for error in tally.errors[:3]:
            print("error:", error)
    if stack.gc_events:
        result["server_gc"] = {name: stack.gc_pauses(*machine.server.window)
                               for name, machine in (("alone", alone_machine),
                                                     ("with_a", both_machine),
                                                     ("alone_again", again_machine))}
        print_table("server garbage collection per phase (ROOST_BENCH_GC=1)",
                    result["server_gc"].items())
    print_result(result)


if __name__ == "__main__":
    main()
