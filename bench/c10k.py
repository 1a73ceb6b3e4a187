"""C10k: 10,000 concurrent streaming turns held open by one server process.

    .venv/bin/python bench/c10k.py                      # 10,000 streams, model latency 10 s
    .venv/bin/python bench/c10k.py --streams 2000       # a quicker look

Every stream is a reference turn with `"stream": true` (SSE): model call → tool → model call,
each model call held 10 s by the mock, so a turn lasts ~20 s and all of them are open at once.
The server sends an SSE heartbeat every --heartbeat-s while a stream is idle, so each stream
should see ~(turn length / heartbeat) of them. The load generator (aiohttp, one process, on
core 1 beside the mock) opens the streams --open-concurrency at a time, reads every frame, and
counts heartbeats, events and terminal events.

Reports: errors (target 0), completed streams, heartbeats per stream, the most streams open at
once, time until all were open, server RSS peak (target <= 1.5 GiB) and CPU. The last line is
the result as JSON.

File descriptors: the server holds one socket per stream plus one per model call in flight,
so 10,000 streams want ~20,000 descriptors in one process. The model client's connection pool
(`providers.mock.max_connections`) is sized to what the hard RLIMIT_NOFILE leaves after the
streams; turns beyond it wait for a pooled connection (they stay open, heartbeating, and end
later). The result reports that pool size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from common import (
    QUESTIONS,
    LeanHTTP,
    MachineSampler,
    Stack,
    add_common_arguments,
    admin_stats,
    admission_toml,
    create_sessions,
    ms,
    nofile_hard,
    percentile,
    pin_self,
    print_result,
    print_table,
    raise_nofile,
    run,
    stop_process,
)

TERMINAL = {"run.completed", "run.failed", "run.cancelled", "run.interrupted"}
FD_MARGIN = 256  # the server's own files: listening socket, SQLite, pipes, epoll, imports


@dataclass
class Streams:
    """Client-side account of every stream."""

    total: int
    open_now: int = 0
    peak_open: int = 0
    opened: int = 0
    all_open_at: float | None = None
    completed: int = 0
    heartbeats: list[int] = field(default_factory=list)  # per completed stream
    events: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    header_latencies: list[float] = field(default_factory=list)
    opens: list[tuple[float, float]] = field(default_factory=list)  # (sent, latency), s
    connects: list[float] = field(default_factory=list)  # TCP connect durations, s
    turn_seconds: list[float] = field(default_factory=list)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{kind}: {detail}")


async def one_stream(http: aiohttp.ClientSession, base: str, session_id: str, index: int,
                     gate: asyncio.Semaphore, streams: Streams, started: float) -> None:
    """Open one streaming turn and read it to its terminal event."""
    opening = True
    await gate.acquire()
    try:
        sent = time.perf_counter()
        async with http.post(f"{base}/v1/sessions/{session_id}/turns",
                             json={"input": QUESTIONS[index % len(QUESTIONS)],
                                   "stream": True}) as response:
            if response.status != 200:
                body = await response.read()
                streams.error(f"http {response.status}", body[:200].decode(errors="replace"))
                return
            streams.header_latencies.append(time.perf_counter() - sent)
            streams.opens.append((sent - started, time.perf_counter() - sent))
            gate.release()
            opening = False
            streams.opened += 1
            streams.open_now += 1
            streams.peak_open = max(streams.peak_open, streams.open_now)
            if streams.opened == streams.total:
                streams.all_open_at = time.perf_counter() - started
            try:
                await read_stream(response, streams, sent)
            finally:
                streams.open_now -= 1
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        streams.error(type(exc).__name__, str(exc))
    finally:
        if opening:
            gate.release()


async def read_stream(response: aiohttp.ClientResponse, streams: Streams, sent: float) -> None:
    heartbeats = 0
    event: str | None = None
    async for raw in response.content:
        line = raw.rstrip(b"\r\n")
        if line.startswith(b":"):
            heartbeats += 1
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode()
            streams.events[event] += 1
        elif not line and event in TERMINAL:
            if event == "run.completed":
                streams.completed += 1
                streams.heartbeats.append(heartbeats)
                streams.turn_seconds.append(time.perf_counter() - sent)
            else:
                streams.error(event, "terminal event")
            return
    streams.error("eof", f"stream ended without a terminal event (last {event})")


@dataclass
class Probes:
    """Responsiveness while the streams are held: the server's (a /healthz round trip) and
    the load generator's own (how late a 100 ms sleep wakes), to tell which side lags."""

    peak: dict[str, int] = field(default_factory=dict)
    healthz: list[float] = field(default_factory=list)
    client_lag: list[float] = field(default_factory=list)


async def watch_server(http: LeanHTTP, stop: asyncio.Event, probes: Probes) -> None:
    """Sample admission stats (how many runs the server held at once) and /healthz."""
    while not stop.is_set():
        try:
            sent = time.perf_counter()
            await http.get("/healthz")
            probes.healthz.append(time.perf_counter() - sent)
            stats = await admin_stats(http)
        except (OSError, TimeoutError, ValueError):
            pass
        else:
            for key in ("running", "queued", "runs_active"):
                probes.peak[key] = max(probes.peak.get(key, 0), int(stats[key]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def watch_client(stop: asyncio.Event, probes: Probes) -> None:
    while not stop.is_set():
        sent = time.perf_counter()
        await asyncio.sleep(0.1)
        probes.client_lag.append(time.perf_counter() - sent - 0.1)


async def new_sessions(base: str, count: int) -> list[str]:
    """Sessions made before the measured window: creating them is not a streaming turn."""
    async with LeanHTTP(base, timeout_s=120) as lean:
        return await create_sessions(lean, count, concurrency=64)


async def hold_streams(base: str, sessions: list[str], open_concurrency: int,
                       limit_s: float) -> tuple[Streams, Probes, float]:
    count = len(sessions)
    async with LeanHTTP(base, timeout_s=120) as lean:
        streams = Streams(total=count)
        probes = Probes()
        stop = asyncio.Event()
        watchers = [asyncio.create_task(watch_server(lean, stop, probes)),
                    asyncio.create_task(watch_client(stop, probes))]
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        trace = aiohttp.TraceConfig()
        connecting: dict[int, float] = {}

        async def on_connect_start(_: Any, ctx: Any, __: Any) -> None:
            connecting[id(ctx)] = time.perf_counter()

        async def on_connect_end(_: Any, ctx: Any, __: Any) -> None:
            streams.connects.append(time.perf_counter() - connecting.pop(id(ctx)))

        trace.on_connection_create_start.append(on_connect_start)
        trace.on_connection_create_end.append(on_connect_end)
        # Heartbeats keep every read under sock_read; the total bounds the whole benchmark.
        timeout = aiohttp.ClientTimeout(total=limit_s, sock_connect=30, sock_read=30)
        gate = asyncio.Semaphore(open_concurrency)
        started = time.perf_counter()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         trace_configs=[trace]) as http:
            await asyncio.gather(*(one_stream(http, base, sid, i, gate, streams, started)
                                   for i, sid in enumerate(sessions)))
        elapsed = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*watchers)
    return streams, probes, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=10_000.0)
    parser.add_argument("--heartbeat-s", type=float, default=2.0)
    parser.add_argument("--open-concurrency", type=int, default=512,
                        help="streams being opened at once (the listen backlog is finite)")
    parser.add_argument("--limit-s", type=float, default=240.0, help="bound on the whole hold")
    add_common_arguments(parser)
    args = parser.parse_args()
    nofile = raise_nofile()
    pin_self(nice=args.nice)

    upstream = max(1, min(args.streams, nofile_hard() - args.streams - FD_MARGIN))
    config = admission_toml(max_running=max(args.streams, 1), max_queued=args.streams // 10)
    config += (f"[sessions]\ncache_max_sessions = {args.streams * 2}\n"
               f"[agents.weather.limits]\nrun_timeout_s = {args.limit_s}\n")
    with Stack(latency_ms=args.latency_ms, nice=args.nice, config=config, mock_backlog=8192,
               server_section=f"heartbeat_s = {args.heartbeat_s}",
               provider_connections=upstream) as stack:
        sessions = run(new_sessions(stack.base, args.streams))
        with MachineSampler(stack) as machine:
            streams, probes, elapsed = run(hold_streams(stack.base, sessions,
                                                      args.open_concurrency, args.limit_s))
        sampler = machine.server
        alive = stack.alive()
        assert stack.server is not None
        exit_code = stop_process(stack.server)
        if not alive:
            print(stack.server_log_tail())

    errors = sum(streams.errors.values())
    result: dict[str, Any] = {
        "bench": "c10k",
        "streams": args.streams,
        "latency_ms": args.latency_ms,
        "heartbeat_s": args.heartbeat_s,
        "nofile_limit": nofile,
        "upstream_connections": upstream,
        "completed": streams.completed,
        "errors": errors,
        "errors_by_kind": dict(streams.errors),
        "peak_open_streams": streams.peak_open,
        "all_open_after_s": None if streams.all_open_at is None else round(streams.all_open_at, 2),
        "server_peak_running": probes.peak.get("running"),
        "server_peak_runs_active": probes.peak.get("runs_active"),
        "healthz_p50_ms": ms(percentile(probes.healthz, 0.5)),
        "healthz_max_ms": ms(max(probes.healthz, default=float("nan"))),
        "client_lag_p50_ms": ms(percentile(probes.client_lag, 0.5)),
        "client_lag_max_ms": ms(max(probes.client_lag, default=float("nan"))),
        "heartbeats_per_stream_min": min(streams.heartbeats, default=None),
        "heartbeats_per_stream_p50": percentile(streams.heartbeats, 0.5),
        "heartbeats_per_stream_max": max(streams.heartbeats, default=None),
        "connect_p50_ms": ms(percentile(streams.connects, 0.5)),
        "connect_max_ms": ms(max(streams.connects, default=float("nan"))),
        "open_p50_ms": ms(percentile(streams.header_latencies, 0.5)),
        "open_p99_ms": ms(percentile(streams.header_latencies, 0.99)),
        "turn_p50_s": round(percentile(streams.turn_seconds, 0.5), 2),
        "turn_max_s": round(max(streams.turn_seconds, default=float("nan")), 2),
        "elapsed_s": round(elapsed, 1),
        "rss_mib_peak": round(sampler.peak_rss_mib, 1),
        "rss_target_mib": 1536,
        "rss_met": sampler.peak_rss_mib <= 1536,
        "server_cpu_s": round(sampler.cpu_s, 1),
        "server_cpu_ms_per_stream": round(1000 * sampler.cpu_s / max(args.streams, 1), 2),
        **machine.result,
        "crashed": not alive,
        "server_exit_code": exit_code,
    }
    print_table(f"c10k ({args.streams} streaming turns)", result.items())
    print_table("server over time (s: RSS MiB, server CPU %, others' CPU %, cores busy %)",
                sampler.table(every=6))
    windows: dict[int, list[float]] = {}
    for sent_at, latency in streams.opens:
        windows.setdefault(int(sent_at // 5) * 5, []).append(latency)
    print_table("streams opened (window start s: count, open p50/max ms)",
                [(f"{w:4d}", f"{len(v):6d} {ms(percentile(v, 0.5)):8.1f} {ms(max(v)):8.1f}")
                 for w, v in sorted(windows.items())])
    problems = [line for line in stack.log_text.splitlines() if line.strip()]
    if problems:
        print(f"\nserver log: {len(problems)} lines, last ones:")
        print("\n".join(problems[-15:]))
    for sample in streams.error_samples:
        print("error:", sample)
    if stack.gc_events:
        result["server_gc"] = stack.gc_pauses(*sampler.window)
        print_table("server garbage collection (ROOST_BENCH_GC=1)", result["server_gc"].items())
    print_result(result)


if __name__ == "__main__":
    main()
