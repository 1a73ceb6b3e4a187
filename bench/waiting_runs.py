"""Memory held by runs waiting for a person: should be ≈ nothing beyond their records.

    python bench/waiting_runs.py --runs 10000
    python bench/waiting_runs.py --runs 10000 --store postgresql://postgres@127.0.0.1:5432/test

In-process (no HTTP): an agent whose tool requires approval, on the offline demo model. N
sessions each run one turn that stops in `waiting`; then the same N turns on an agent
without approval, which complete — the baseline. A waiting run holds no task, slot, lease or
handle, so both phases should leave the same memory (the hot-session cache, bounded by
`sessions.cache_max_sessions`, holds the sessions either way; `--cache 1` takes it out of
the picture). Reports, after a full collection: Python heap (tracemalloc) and RSS growth per
phase, per run, and the runtime's live runs and tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
import tracemalloc
import uuid

import psutil

from roost import Agent, Runtime, Settings, tool


@tool(requires_approval=True)
async def transfer(amount: int, to: str) -> str:
    """Move money."""
    return f"sent {amount} to {to}"


@tool(name="transfer_free")
async def transfer_free(amount: int, to: str) -> str:
    """Move money."""
    return f"sent {amount} to {to}"


def settings(store: str, cache: int) -> Settings:
    # A fresh schema or key prefix: the bench's 20,000 sessions stay apart from anything else.
    tag = f"bench_{uuid.uuid4().hex[:8]}"
    options = ({"schema": tag} if store.startswith("postgres")
               else {"prefix": f"{tag}:"} if store.startswith("redis") else {})
    return Settings(store={"url": store, "options": options},
                    sessions={"cache_max_sessions": cache})


async def phase(runtime: Runtime, agent: str, runs: int, status: str,
                concurrency: int) -> float:
    # A few workers, not one task per run: the harness must not hold N objects itself.
    numbers = iter(range(runs))

    async def worker() -> None:
        for i in numbers:
            session = await runtime.create_session("default", agent, user_id=f"u{i}")
            run = await (await runtime.submit_turn("default", session.id, f"pay {i}")).wait()
            if run.status != status:
                raise RuntimeError(f"run {run.status}: {run.error}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def measure() -> tuple[int, int]:
    gc.collect()
    return tracemalloc.get_traced_memory()[0], psutil.Process().memory_info().rss


async def main(args: argparse.Namespace) -> None:
    store = args.store or f"sqlite:///{tempfile.mkdtemp(prefix='roost-wait-')}/roost.db"
    agents = [Agent(name="gated", model="demo", tools=[transfer]),
              Agent(name="free", model="demo", tools=[transfer_free])]
    runtime = Runtime(settings(store, args.cache), agents)
    await runtime.start()
    try:
        # Warm up both paths: one-time costs (statement caches, code paths) stay out.
        await phase(runtime, "free", 200, "completed", args.concurrency)
        await phase(runtime, "gated", 200, "waiting", args.concurrency)
        tracemalloc.start()
        heap0, rss0 = measure()
        waited_s = await phase(runtime, "gated", args.runs, "waiting", args.concurrency)
        heap1, rss1 = measure()
        done_s = await phase(runtime, "free", args.runs, "completed", args.concurrency)
        heap2, rss2 = measure()
        tracemalloc.stop()
        live_tasks = len([t for t in asyncio.all_tasks() if not t.done()])
        waiting = len(await runtime.store.list_runs("default", status="waiting", limit=1000))
        n = args.runs
        print(f"store: {runtime.store.backend}  runs: {n}  cache_max_sessions: {args.cache}")
        print(f"waiting phase:   heap +{(heap1 - heap0) / 1e6:7.2f} MB "
              f"({(heap1 - heap0) / n:7.0f} B/run)  RSS +{(rss1 - rss0) / 1e6:7.2f} MB  "
              f"({waited_s:.1f} s)")
        print(f"completed phase: heap +{(heap2 - heap1) / 1e6:7.2f} MB "
              f"({(heap2 - heap1) / n:7.0f} B/run)  RSS +{(rss2 - rss1) / 1e6:7.2f} MB  "
              f"({done_s:.1f} s)  (baseline)")
        print(f"live runs in the runtime: {len(runtime.runs)}  tasks: {live_tasks}  "
              f"admission running: {runtime.admission.statistics().running}  "
              f"waiting records (first page): {waiting}")
    finally:
        await runtime.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--store", default="")
    parser.add_argument("--cache", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    sys.exit(asyncio.run(main(parser.parse_args())))
