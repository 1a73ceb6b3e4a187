"""The durable run queue's claim cost, and schedule firing jitter.

    python bench/bench_background.py                       # PostgreSQL and Redis
    python bench/bench_background.py --runs 2000 --batch 1 --claimers 4

Claim: `--runs` queued runs (records written, queue entries added) are claimed by
`--claimers` concurrent claimers (one process, one store connection each), `--batch` runs
per claim. Reports per claimed run the process CPU (client side: encode, decode, driver) and
the claim's latency p50/p99, per backend. The database's own CPU is not included.

Jitter: a schedule ticking every second fired by one runtime on the store for `--seconds`;
reports how late after its tick each run was queued (p50/p99/max).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile  # noqa: E402

from roost.background.store import open_background_store  # noqa: E402
from roost.sessions import open_store  # noqa: E402
from roost.sessions.records import RunRecord, Session  # noqa: E402

STORES = {"postgres": "postgresql://postgres@127.0.0.1:5432/test",
          "redis": "redis://127.0.0.1:6379/15"}


async def claim_cost(name: str, url: str, runs: int, batch: int, claimers: int) -> None:
    options: dict[str, object] = ({"schema": f"bench_{uuid.uuid4().hex[:8]}"}
                                  if name == "postgres" else
                                  {"prefix": f"bench{uuid.uuid4().hex[:8]}:"})
    store = open_store(url, **options)
    await store.open()
    queue = open_background_store(url, store, **options)
    await queue.open()
    try:
        session = Session(id="ses_bench", agent="a")
        await store.create_session(session)
        for i in range(runs):
            run = RunRecord(id=f"run_{i:06d}", session_id=session.id, agent="a",
                            status="queued", input="x", attempt=0)
            await store.put_run(run)
            await queue.enqueue(run, 0.0)
        latencies: list[float] = []
        taken = 0

        async def claimer(k: int) -> None:
            nonlocal taken
            while True:
                t0 = time.perf_counter()
                got = await queue.claim(f"bench-{k}", 30.0, batch)
                latencies.append(time.perf_counter() - t0)
                if not got:
                    return
                taken += len(got)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(claimer(k) for k in range(claimers)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        assert taken == runs, f"{taken} claimed of {runs}"
        print(f"{name:9s} claim: {runs} runs, batch {batch}, {claimers} claimers: "
              f"{cpu / runs * 1e6:7.1f} µs CPU/run, {runs / wall:7.0f} runs/s, latency per "
              f"claim p50 {percentile(latencies, 0.50) * 1e3:.2f} ms, "
              f"p99 {percentile(latencies, 0.99) * 1e3:.2f} ms")
    finally:
        await queue.close()
        if name == "postgres":
            await store.close()
            import asyncpg

            conn = await asyncpg.connect(url)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{options["schema"]}" CASCADE')
            await conn.close()
        else:
            await store.close()
            import redis.asyncio as aioredis

            r = aioredis.Redis.from_url(url)
            keys = [k async for k in r.scan_iter(f"{options['prefix']}*")]
            if keys:
                await r.delete(*keys)
            await r.aclose()


async def jitter(name: str, url: str, seconds: float) -> None:
    from roost import Agent
    from roost.config import Settings
    from roost.runtime.runtime import Runtime

    options: dict[str, object] = ({"schema": f"bench_{uuid.uuid4().hex[:8]}"}
                                  if name == "postgres" else
                                  {"prefix": f"bench{uuid.uuid4().hex[:8]}:"})
    runtime = Runtime(Settings(store={"url": url, "options": options}),
                      [Agent(name="a", model="demo")])
    await runtime.start()
    try:
        await runtime.scheduler.create("default", "a", cron="* * * * * *", input="tick")
        await asyncio.sleep(seconds)  # the measured subject is the passing of ticks
        delays = runtime.scheduler.delays
        print(f"{name:9s} jitter: {len(delays)} ticks in {seconds:g} s, queued after the tick "
              f"p50 {percentile(delays, 0.50) * 1e3:.1f} ms, p99 {percentile(delays, 0.99) * 1e3:.1f}"
              f" ms, max {max(delays) * 1e3:.1f} ms")
    finally:
        await runtime.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--claimers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--stores", default="postgres,redis")
    args = parser.parse_args()
    for name in args.stores.split(","):
        await claim_cost(name, STORES[name], args.runs, args.batch, args.claimers)
        await claim_cost(name, STORES[name], args.runs, 32, args.claimers)
    for name in args.stores.split(","):
        await jitter(name, STORES[name], args.seconds)


if __name__ == "__main__":
    asyncio.run(main())
