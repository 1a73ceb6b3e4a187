"""Memory stays bounded however many sessions exist.

    python bench/sessions_memory.py --sessions 100000 --store sqlite:///tmp/mem.db

Creates N sessions and runs one turn in each (examples/weather.py on the offline demo model,
in-process: no HTTP, so the figure is the runtime's own memory), sampling RSS every N/10
sessions. With the hot-session cache bounded (`sessions.cache_max_sessions`, default 10,000)
RSS should rise while the cache fills and then stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from weather import weather  # noqa: E402

from roost import Runtime, Settings  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    store = args.store or f"sqlite:///{tempfile.mkdtemp(prefix='roost-mem-')}/roost.db"
    runtime = Runtime(Settings(store={"url": store},
                               sessions={"cache_max_sessions": args.cache}), [weather])
    await runtime.start()
    process = psutil.Process()
    samples: list[tuple[int, float, int]] = []
    started = time.perf_counter()
    step = max(1, args.sessions // 10)
    semaphore = asyncio.Semaphore(args.concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            session = await runtime.create_session("default", "weather", user_id=f"u{i}")
            handle = await runtime.submit_turn("default", session.id, f"weather in City{i % 500}?")
            run = await handle.wait()
            if run.status != "completed":
                raise RuntimeError(f"run {run.status}: {run.error}")

    for start in range(0, args.sessions, step):
        await asyncio.gather(*(one(i) for i in range(start, min(start + step, args.sessions))))
        gc.collect()
        samples.append((start + step, process.memory_info().rss / 2**20, len(runtime.cache)))
        print(f"{start + step:>8} sessions  rss {samples[-1][1]:7.1f} MiB  cached {samples[-1][2]}",
              flush=True)
    elapsed = time.perf_counter() - started
    await runtime.close()
    after_fill = [rss for n, rss, _ in samples if n >= args.cache]
    growth = (after_fill[-1] - after_fill[0]) if len(after_fill) > 1 else 0.0
    print(f"store {store.split('://')[0]}: {args.sessions} sessions x 1 turn in {elapsed:.1f} s; "
          f"RSS {samples[0][1]:.1f} → {samples[-1][1]:.1f} MiB; growth after the cache filled: "
          f"{growth:+.1f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--store", default=None)
    parser.add_argument("--cache", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
