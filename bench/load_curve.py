"""Server CPU per turn at a given load: open-loop Poisson arrivals of reference turns.

    .venv/bin/python bench/load_curve.py                          # SQLite, 50-400 turns/s
    .venv/bin/python bench/load_curve.py --store memory:// --rates 50,100,200,400

A server is rarely saturated, and what a turn costs depends on the load: at low rates nothing
batches (each append is its own hand-off to the SQLite writer thread, each event its own
event-loop wake-up), so the reference figure, measured near saturation, is the cheap end.
For each rate: 4 s of Poisson arrivals on fresh sessions (the reference turn, 50 ms mock),
then the server's CPU over the window divided by the turns completed. Then 4 s idle: what the
server costs doing nothing. The last line is the result as JSON.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from common import (
    MachineSampler,
    Stack,
    add_common_arguments,
    admission_toml,
    pin_self,
    print_result,
    print_table,
    run,
)
from overload import new_sessions, poisson


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=None, help="store URL (default: a fresh SQLite file)")
    parser.add_argument("--rates", default="50,100,200,400", help="turns/s, comma-separated")
    parser.add_argument("--window-s", type=float, default=4.0)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    add_common_arguments(parser)
    args = parser.parse_args()
    pin_self(nice=args.nice)
    rates = [float(r) for r in args.rates.split(",")]
    rows: list[dict[str, Any]] = []
    config = admission_toml(max_running=4096, max_queued=4096)
    with Stack(latency_ms=args.latency_ms, config=config, store=args.store,
               nice=args.nice) as stack:
        run(poisson(stack.base, 100, 1.0, run(new_sessions(stack.base, 200))))  # warm-up
        for rate in rates:
            ids = run(new_sessions(stack.base, math.ceil(rate * args.window_s * 1.3) + 32))
            with MachineSampler(stack) as machine:
                tally, *_ = run(poisson(stack.base, rate, args.window_s, ids, seed=3))
            rows.append({"rate": rate, "turns": tally.completed, "errors": len(tally.errors),
                         "cpu_ms_per_turn": round(1000 * machine.server.cpu_s
                                                  / max(tally.completed, 1), 3),
                         "server_cpu_percent": round(machine.server.cpu_percent, 1)})
        with MachineSampler(stack) as idle:
            time.sleep(args.window_s)
    print_table("server CPU per turn by offered load (turns/s: ms/turn, server CPU %)",
                [(f"{r['rate']:6.0f}", f"{r['cpu_ms_per_turn']:7.3f} {r['server_cpu_percent']:6.1f}")
                 for r in rows])
    print_result({"bench": "load_curve", "store": (args.store or "sqlite").split("://")[0],
                  "rows": rows, "idle_cpu_percent": round(idle.server.cpu_percent, 2)})


if __name__ == "__main__":
    main()
