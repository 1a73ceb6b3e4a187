"""Append throughput, latency and CPU cost of a session store.

    python bench/bench_store.py --url sqlite:///tmp/b.db --sessions 200 --appends 20 --concurrency 32

`--sessions` sessions are created, then `--concurrency` tasks take them one at a time and
append `--appends` events to each, one event per append, each a compare-and-set on the
version the previous append returned: the shape of a turn's steps, one writer per session,
many sessions at once. Prints appends/s, p50/p99 append latency and the process CPU spent
per append (every thread: the store's own threads count). Sessions live in a fresh tenant and
are deleted afterwards, so the URL may point at a shared PostgreSQL or Redis; `--option`
passes store options, e.g. `--option schema=bench --option drop_schema_on_close=true`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from roost.sessions import Event, RunRecord, Session, open_store  # noqa: E402


def parse_option(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    value: object = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                pass
    return key, value


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def run(args: argparse.Namespace) -> None:
    store = open_store(args.url, **dict(args.option))
    await store.open()
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    payload = "x" * args.event_bytes
    try:
        ids = [f"s-{n:06d}" for n in range(args.sessions)]
        await asyncio.gather(
            *(store.create_session(Session(id=i, tenant=tenant, agent="bench")) for i in ids)
        )
        pending: asyncio.Queue[str] = asyncio.Queue()
        for session_id in ids:
            pending.put_nowait(session_id)
        latencies: list[float] = []

        async def worker() -> None:
            while not pending.empty():
                session_id = pending.get_nowait()
                run = RunRecord(
                    id=f"r-{session_id}",
                    session_id=session_id,
                    tenant=tenant,
                    agent="bench",
                    status="running",
                )
                version = 0
                for n in range(args.appends):
                    event = Event(
                        type="message",
                        run_id=run.id,
                        data={"role": "assistant", "content": payload, "n": n},
                    )
                    started = time.perf_counter()
                    version = await store.append(
                        tenant,
                        session_id,
                        [event],
                        version,
                        run=run if n in (0, args.appends - 1) else None,
                    )
                    latencies.append(time.perf_counter() - started)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0

        total = len(latencies)
        latencies.sort()
        print(f"store          {args.url}  ({store.backend})")
        print(
            f"appends        {total} ({args.sessions} sessions x {args.appends}, "
            f"concurrency {args.concurrency}, {args.event_bytes} B payload)"
        )
        print(f"throughput     {total / wall:,.0f} appends/s  ({wall:.2f} s)")
        print(
            f"latency        p50 {percentile(latencies, 0.50) * 1e3:.3f} ms  "
            f"p99 {percentile(latencies, 0.99) * 1e3:.3f} ms  "
            f"mean {statistics.fmean(latencies) * 1e3:.3f} ms  "
            f"max {latencies[-1] * 1e3:.3f} ms"
        )
        print(f"cpu            {cpu / total * 1e3:.4f} ms per append (process, all threads)")
        stats = getattr(store, "statistics", None)
        if stats is not None:
            print(f"store stats    {stats()}")
        await asyncio.gather(*(store.delete_session(tenant, i) for i in ids))
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="sqlite:///tmp/roost-bench.db")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--appends", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--event-bytes", type=int, default=200)
    parser.add_argument(
        "--option",
        type=parse_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="store option, repeatable (e.g. schema=bench drop_schema_on_close=true)",
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    args = parser.parse_args()
    loop_factory = None
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run(args))


if __name__ == "__main__":
    main()
