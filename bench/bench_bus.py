"""Fleet bus latency and CPU: publish in one process, receive in another.

    .venv/bin/python bench/bench_bus.py [--backend redis|postgres|all] [-n 5000]
                                        [--rate 1000] [--channels 20] [--size 300]

The publisher (this process) publishes `n` run events (JSON, about `size` bytes each, spread
over `channels` channels) at `rate` per second, as a run's hot path would: `publish` only
enqueues, the bus's writer task batches what is waiting into one round trip. The subscriber
(a second process, with its own bus: its own connections, as another instance would have)
receives and decodes them. Both stamp `time.perf_counter_ns()` (CLOCK_MONOTONIC, one clock
for the whole machine), so the latency is publish() -> decoded in the other process.

With `--saturate`: only the CPU per message of publish + the writer at full batches.

Prints per backend: p50/p99/max latency, messages lost, the hot-path cost per message
(building the Event, encode_events, publish), and process CPU per message on each side,
with the same publishing loop on the in-process bus for comparison (the harness's own cost:
on a small VM an idle asyncio timer tick alone costs ~0.1 ms of CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from roost.bus import BusLimits, open_bus  # noqa: E402
from roost.runtime.follow import decode_events, encode_events  # noqa: E402
from roost.sessions.records import Event  # noqa: E402

URLS = {
    "local": "memory://",
    "redis": os.environ.get("ROOST_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"),
    "postgres": os.environ.get("ROOST_BENCH_POSTGRES_URL",
                               "postgresql://postgres@127.0.0.1:5432/test"),
}


TICK_S = 0.005
LIMITS = BusLimits()


def options(backend: str, name: str) -> dict[str, Any]:
    return {"prefix": f"bench{name}:", "schema": f"bench{name}", "limits": LIMITS}


async def subscriber(backend: str, name: str, channels: int, n: int,
                     ready: Any, results: Any) -> None:
    bus = open_bus(URLS[backend], **options(backend, name))
    await bus.open()
    latencies: list[int] = []
    gaps = 0
    done = asyncio.Event()
    subs = [bus.subscribe(f"run:{i}") for i in range(channels)]
    for sub in subs:
        await sub.__aenter__()

    async def drain(sub: Any) -> None:
        nonlocal gaps
        async for payload in sub:
            if payload is None:
                gaps += 1
                continue
            now = time.perf_counter_ns()
            for event in decode_events(payload):
                latencies.append(now - event.data["t"])
            if len(latencies) >= n:
                done.set()

    cpu0 = time.process_time()
    ready.send("ready")
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(drain(sub)) for sub in subs]
        try:
            async with asyncio.timeout(60):
                await done.wait()
        except TimeoutError:
            pass
        cpu = time.process_time() - cpu0
        for task in tasks:
            task.cancel()
    await bus.close()
    results.send((latencies, gaps, cpu))


def run_subscriber(*args: Any) -> None:
    asyncio.run(subscriber(*args))


async def publisher(backend: str, name: str, channels: int, n: int, rate: float,
                    size: int) -> tuple[float, float, Any]:
    """(process CPU while publishing, time in the hot path: Event + encode + publish,
    statistics)."""
    bus = open_bus(URLS[backend], **options(backend, name))
    await bus.open()
    filler = "x" * max(0, size - 150)
    tick = TICK_S  # publish in ticks: a steady rate without a timer per message
    per_tick = max(1, round(rate * tick))
    loop = asyncio.get_running_loop()
    in_publish = 0.0
    cpu0 = time.process_time()
    start = loop.time()
    sent = 0
    seq = 0
    while sent < n:
        t0 = time.perf_counter()
        for _ in range(min(per_tick, n - sent)):
            seq += 1
            event = Event(type="message.delta", run_id="r", seq=seq,
                          data={"t": time.perf_counter_ns(), "text": filler})
            bus.publish(f"run:{sent % channels}", encode_events([event]))
            sent += 1
        in_publish += time.perf_counter() - t0
        await asyncio.sleep(max(0.0, start + (sent / per_tick) * tick - loop.time()))
    await bus.close()  # flushes the outbox first (and costs a few ms of CPU itself)
    cpu = time.process_time() - cpu0
    return cpu, in_publish, bus.statistics()


def bench(backend: str, args: argparse.Namespace) -> None:
    name = uuid.uuid4().hex[:8]
    ctx = mp.get_context("spawn")
    ready_r, ready_w = ctx.Pipe(duplex=False)
    results_r, results_w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_subscriber,
                       args=(backend, name, args.channels, args.n, ready_w, results_w))
    proc.start()
    if not ready_r.poll(30):
        raise SystemExit(f"{backend}: the subscriber did not start")
    ready_r.recv()
    pub_cpu, in_publish, stats = asyncio.run(
        publisher(backend, name, args.channels, args.n, args.rate, args.size))
    latencies, gaps, sub_cpu = results_r.recv()
    # The same loop on the in-process bus: what the harness (and asyncio's timer ticks) cost.
    base_cpu, _, _ = asyncio.run(publisher("local", name, args.channels, args.n, args.rate, args.size))
    proc.join(10)
    lat = sorted(latencies)
    if not lat:
        print(f"{backend:9} nothing received (gaps {gaps})")
        return

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6

    print(f"{backend:9} n={args.n} rate={args.rate:.0f}/s tick={args.tick_ms}ms "
          f"linger={args.linger_ms}ms channels={args.channels} "
          f"size~{args.size}B | latency p50 {pct(0.50):.2f} ms  p99 {pct(0.99):.2f} ms  "
          f"max {lat[-1] / 1e6:.2f} ms  mean {statistics.fmean(lat) / 1e6:.2f} ms | "
          f"lost {args.n - len(lat)} gaps {gaps} | per msg: hot path (Event+encode+publish) "
          f"{in_publish / args.n * 1e6:.1f} us, publisher CPU {pub_cpu / args.n * 1e6:.1f} us "
          f"(harness alone {base_cpu / args.n * 1e6:.1f}),"
          f" subscriber process {sub_cpu / max(1, len(lat)) * 1e6:.1f} us | dropped {stats.dropped}")


async def saturate(backend: str, n: int, size: int) -> None:
    """The writer's CPU per message at full batches: bursts of 1000, nobody subscribed."""
    name = uuid.uuid4().hex[:8]
    bus = open_bus(URLS[backend], **options(backend, name))
    await bus.open()
    payload = encode_events([Event(type="message.delta", data={"text": "x" * max(0, size - 80)})])
    cpu0 = time.process_time()
    for sent in range(0, n, 1000):
        for i in range(min(1000, n - sent)):
            bus.publish(f"run:{i % 20}", payload)
        await bus.close() if sent + 1000 >= n else await _drained(bus)
    cpu = time.process_time() - cpu0
    print(f"{backend:9} saturated: {cpu / n * 1e6:.1f} us of CPU per message "
          f"(publish + writer, bursts of 1000, ~{len(payload)}B)")


async def _drained(bus: Any) -> None:
    while bus.statistics().queued:  # noqa: ASYNC110 (a bench: no event to wait on)
        await asyncio.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="all", choices=["redis", "postgres", "all"])
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--size", type=int, default=300, help="approximate payload bytes")
    parser.add_argument("--tick-ms", type=float, default=5.0,
                        help="publish every this many ms (rate * tick messages at a time)")
    parser.add_argument("--linger-ms", type=float, default=BusLimits().linger_s * 1000,
                        help="BusLimits.linger_s, in ms")
    parser.add_argument("--saturate", action="store_true",
                        help="only the writer's CPU per message at full batches")
    args = parser.parse_args()
    global TICK_S, LIMITS
    TICK_S = args.tick_ms / 1000
    LIMITS = BusLimits(linger_s=args.linger_ms / 1000)
    for backend in (["redis", "postgres"] if args.backend == "all" else [args.backend]):
        if args.saturate:
            asyncio.run(saturate(backend, args.n * 8, args.size))
        else:
            bench(backend, args)


if __name__ == "__main__":
    main()
