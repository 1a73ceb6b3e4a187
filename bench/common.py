"""Shared harness of the overload benchmarks (`overload.py`, `c10k.py`, `fairness.py`).

    with Stack(latency_ms=50, config=admission_toml(max_running=32, max_queued=8)) as stack:
        with MachineSampler(stack) as machine:       # server RSS/CPU, mock, cores
            tally, *_ = run(drive_load(stack.base))  # e.g. open_loop() + json_turn()
        print(machine.result, machine.server.peak_rss_mib)

`Stack` starts the mock model (`roost.testing.mock_openai`) pinned to core 1 and a
`roost serve examples/weather.py` pinned to core 0, its weather agent pointed at the mock (the
reference scenario of `reference.py`: HTTP → model → one tool → model → answer, persisted), and
stops both on exit. The load generator runs in the calling process, moved to core 1 beside the
mock, so core 0 measures the server alone (`--nice -10` raises all three above other work on a
shared machine). Every process gets the highest open-files limit the machine allows (the hard
limit: raising it needs privileges benchmarks should not ask for). Load comes from `LeanHTTP`,
a minimal keep-alive client cheap enough not to be the bottleneck it measures. Everything
listens and connects on 127.0.0.1 only; every loop is bounded in requests and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import psutil

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SERVER_CORE, CLIENT_CORE = 0, 1
QUESTIONS = ("What's the weather in Paris?", "And in Tokyo?", "How about New York?")
TURNS_PER_SESSION = 3  # as in reference.py: a session serves three turns, then a fresh one


# -- processes --------------------------------------------------------------------------------
def raise_nofile() -> int:
    """Raise this process's open-files soft limit to the hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def prepare_child(nice: int = 0) -> Callable[[], None]:
    """A `preexec_fn` for benchmark processes: the open-files limit raised, and on a machine
    shared with other work optionally a higher priority (`nice` < 0 needs root)."""

    def prepare() -> None:
        raise_nofile()
        if nice:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, nice)

    return prepare


def nofile_hard() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") else argv


def pin_self(core: int = CLIENT_CORE, nice: int = 0) -> None:
    """Move the load generator to `core` (beside the mock), leaving the server's core alone."""
    if shutil.which("taskset") and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {core})
    if nice:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nice", type=int, default=0,
                        help="priority of the server, mock and load generator (e.g. -10 on a "
                             "machine busy with other work; negative needs root)")


def wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int | None:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


def admission_toml(*, max_running: int, max_queued: int,
                   tenants: dict[str, dict[str, float | int]] | None = None) -> str:
    """An `[admission]` section (and `[admission.tenants.*]` quotas) for `Stack(config=…)`."""
    lines = ["[admission]", f"max_running = {max_running}", f"max_queued = {max_queued}"]
    for name, quota in (tenants or {}).items():
        lines.append(f"[admission.tenants.{name}]")
        lines.extend(f"{key} = {value}" for key, value in quota.items())
    return "\n".join(lines) + "\n"


# Loaded into the server with `ROOST_BENCH_GC=1` (as sitecustomize, from a temporary
# directory first on its PYTHONPATH): records every garbage collection's start (perf_counter,
# one clock for all processes here), generation and pause, and writes them at exit. Read
# with `Stack.gc_pauses`. `ROOST_BENCH_GC=freeze` also tries the fix for long full
# collections: 3 s after start (imports done, serving), collect once and `gc.freeze()` what
# is left, so later full collections skip the tens of MiB of long-lived startup objects.
# Diagnosis only; the server's code is untouched.
_GC_TRACE = """
import atexit, gc, json, os, threading, time
_out = os.environ.get("ROOST_BENCH_GC_OUT")
if os.environ.get("ROOST_BENCH_GC") == "freeze":
    def _freeze():
        gc.collect()
        gc.freeze()
    _timer = threading.Timer(3.0, _freeze)
    _timer.daemon = True
    _timer.start()
if _out:
    _events, _start = [], [0.0]
    def _record(phase, info):
        if phase == "start":
            _start[0] = time.perf_counter()
        elif len(_events) < 1_000_000:
            _events.append((_start[0], info["generation"], time.perf_counter() - _start[0]))
    gc.callbacks.append(_record)
    def _dump():
        with open(_out, "w") as file:
            json.dump(_events, file)
    atexit.register(_dump)
"""


class Stack:
    """The mock model (core 1) and a pinned `roost serve` (core 0), stopped on exit.

    `config` is TOML appended to the server's config (admission limits, heartbeat, …);
    `server_section` adds keys to its `[server]` table. The server's stderr is kept in
    `workdir/server.log` and its tail printed when it dies.
    """

    def __init__(self, *, latency_ms: float, config: str = "", server_section: str = "",
                 store: str | None = None, mock_backlog: int = 4096,
                 provider_connections: int = 1000, nice: int = 0) -> None:
        self.nice = nice
        self.workdir = Path(tempfile.mkdtemp(prefix="roost-bench-"))
        self.store = store or f"sqlite:///{self.workdir}/roost.db"
        self.mock_port, self.server_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.server_port}"
        self.latency_ms = latency_ms
        self.mock_backlog = mock_backlog
        self.config_path = self.workdir / "roost.toml"
        self.config_path.write_text(f"""
[server]
host = "127.0.0.1"
port = {self.server_port}
{server_section}
[store]
url = "{self.store}"
[providers.mock]
type = "openai"
base_url = "http://127.0.0.1:{self.mock_port}/v1"
max_connections = {provider_connections}
[models.mock]
provider = "mock"
model = "gpt-mock"
[agents.weather]
model = "mock"
{config}
""")
        self.mock: subprocess.Popen[bytes] | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.log_text = ""
        self.gc_events: list[tuple[float, int, float]] = []  # with ROOST_BENCH_GC=1

    @property
    def server_pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def __enter__(self) -> Stack:
        raise_nofile()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        server_env = dict(env)
        if os.environ.get("ROOST_BENCH_GC"):
            trace = self.workdir / "gctrace"
            trace.mkdir()
            (trace / "sitecustomize.py").write_text(_GC_TRACE)
            server_env["PYTHONPATH"] = os.pathsep.join(
                [str(trace), *filter(None, [env.get("PYTHONPATH")])])
            server_env["ROOST_BENCH_GC_OUT"] = str(self.workdir / "gc.json")
        try:
            self.mock = subprocess.Popen(
                pinned(CLIENT_CORE, [PYTHON, "-m", "roost.testing.mock_openai", "--port",
                                     str(self.mock_port), "--latency-ms", str(self.latency_ms),
                                     "--backlog", str(self.mock_backlog)]),
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                preexec_fn=prepare_child(self.nice))
            self._log = open(self.workdir / "server.log", "w")  # noqa: SIM115 - closed in __exit__
            self.server = subprocess.Popen(
                pinned(SERVER_CORE, [PYTHON, "-m", "roost.cli", "serve",
                                     str(ROOT / "examples" / "weather.py"), "--config",
                                     str(self.config_path), "--log-level", "warning"]),
                env=server_env, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=self._log,
                preexec_fn=prepare_child(self.nice))
            wait_for(f"http://127.0.0.1:{self.mock_port}/v1/models")
            wait_for(f"{self.base}/healthz")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def gc_pauses(self, start: float, end: float) -> dict[str, Any]:
        """The server's garbage collections between two perf_counter times (ROOST_BENCH_GC=1;
        available after the stack stopped)."""
        pauses = [(gen, pause) for at, gen, pause in self.gc_events if start <= at <= end]
        full = [pause for gen, pause in pauses if gen == 2]
        return {"collections": len(pauses), "gen2": len(full),
                "total_ms": ms(sum(p for _, p in pauses)),
                "max_ms": ms(max((p for _, p in pauses), default=0.0)),
                "gen2_max_ms": ms(max(full, default=0.0)),
                "over_5ms": sum(1 for _, p in pauses if p > 0.005)}

    def alive(self) -> bool:
        return self.server is not None and self.server.poll() is None

    def server_log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.workdir / "server.log").read_text().splitlines()[-lines:])
        return ""

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for proc in (self.server, self.mock):
            if proc is not None:
                stop_process(proc)
        if self._log is not None:
            self._log.close()
        with contextlib.suppress(OSError):
            self.log_text = (self.workdir / "server.log").read_text(errors="replace")
        with contextlib.suppress(OSError, ValueError):
            self.gc_events = json.loads((self.workdir / "gc.json").read_text())
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- measuring the server ---------------------------------------------------------------------
@dataclass(slots=True)
class Sample:
    """One sampling interval: when (perf_counter), the server's RSS and CPU, and the CPU
    other work on the machine took (all cores busy, minus server, mock and load generator),
    in % of one core."""

    t: float
    rss_mib: float
    server_cpu: float
    others_cpu: float
    cores: list[float]


class ResourceSampler:
    """Samples the server's RSS and CPU, and what else ran on the machine, every `interval`
    seconds in a thread while in `with`.

    `cpu_s` is the server's user + system CPU inside the block; `series` holds a `Sample`
    per interval: a bounded-memory check over time, and a record of interference (other
    people's work on a shared machine) to read latency spikes against."""

    def __init__(self, pid: int, *, ours: Iterable[int] = (), interval: float = 0.5) -> None:
        self.pid = pid
        self.process = psutil.Process(pid)
        self.ours = [psutil.Process(p) for p in ours]  # the benchmark's other processes
        self.interval = interval
        self.series: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
        self._cpu0 = 0.0
        self._cpu1 = 0.0
        self._t0 = 0.0
        self._t1 = 0.0

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def _ours_cpu(self) -> float:
        total = 0.0
        for process in self.ours:
            with contextlib.suppress(psutil.Error):
                total += self._cpu(process)
        return total

    def _run(self) -> None:
        last_t, last_cpu, last_ours = self._t0, self._cpu0, self._ours_cpu()
        last_cores = psutil.cpu_times(percpu=True)
        while not self._stop.wait(self.interval):
            try:
                now, cpu, ours = time.perf_counter(), self._cpu(self.process), self._ours_cpu()
                rss = self.process.memory_info().rss / 2**20
            except psutil.Error:
                return
            cores_now = psutil.cpu_times(percpu=True)
            cores = [_busy(a, b) for a, b in zip(last_cores, cores_now, strict=True)]
            span = max(now - last_t, 1e-9)
            server = 100.0 * (cpu - last_cpu) / span
            others = max(0.0, sum(cores) - server - 100.0 * (ours - last_ours) / span)
            self.series.append(Sample(now, rss, server, others, cores))
            last_t, last_cpu, last_ours, last_cores = now, cpu, ours, cores_now

    def __enter__(self) -> ResourceSampler:
        self._t0, self._cpu0 = time.perf_counter(), self._cpu(self.process)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(psutil.Error):
            self._t1, self._cpu1 = time.perf_counter(), self._cpu(self.process)

    @property
    def window(self) -> tuple[float, float]:
        """The `with` block's start and end, perf_counter times."""
        return self._t0, self._t1

    @property
    def seconds(self) -> float:
        return self._t1 - self._t0

    @property
    def cpu_s(self) -> float:
        return self._cpu1 - self._cpu0

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_s / max(self._t1 - self._t0, 1e-9)

    @property
    def peak_rss_mib(self) -> float:
        return max((s.rss_mib for s in self.series), default=float("nan"))

    def rss_at(self, fraction: float) -> float:
        """RSS at a fraction of the run (0 = first sample, 1 = last): growth over time."""
        if not self.series:
            return float("nan")
        return self.series[min(len(self.series) - 1, int(fraction * len(self.series)))].rss_mib

    def others_at(self, t: float) -> float:
        """Other work's CPU (% of a core) in the interval containing perf_counter time `t`."""
        for sample in self.series:
            if sample.t >= t:
                return sample.others_cpu
        return self.series[-1].others_cpu if self.series else 0.0

    def table(self, every: int = 1) -> list[tuple[str, str]]:
        return [(f"{s.t - self._t0:5.1f}",
                 f"{s.rss_mib:7.1f} {s.server_cpu:6.1f} {s.others_cpu:6.1f}   "
                 + " ".join(f"{c:5.1f}" for c in s.cores))
                for s in self.series[::every]]


class Profiler:
    """`ROOST_BENCH_PROFILE=out.txt`: py-spy records the server (attached by pid, running on
    the client core, collapsed stacks) for the duration of the `with` block."""

    def __init__(self, pid: int, output: str | None = None) -> None:
        self.pid = pid
        self.output = output if output is not None else os.environ.get("ROOST_BENCH_PROFILE")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
        if self.output and Path(spy).exists():
            self.proc = subprocess.Popen(
                pinned(CLIENT_CORE, [spy, "record", "--pid", str(self.pid), "--format", "raw",
                                     "--rate", "200", "--gil", "--nonblocking", "-o", self.output]),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output, then exits
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _busy(before: Any, after: Any) -> float:
    """Busy % of one core between two `psutil.cpu_times(percpu=True)` entries."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (
        before.idle + getattr(before, "iowait", 0.0))
    return 100.0 * (total - idle) / total if total > 0 else 0.0


class MachineSampler:
    """CPU of the server, the mock, this load generator and each core, over a `with` block:
    shows whether the server or the client side (core 1) was the bottleneck."""

    def __init__(self, stack: Stack) -> None:
        assert stack.server is not None and stack.mock is not None
        self.server = ResourceSampler(stack.server.pid, ours=[stack.mock.pid, os.getpid()])
        self.profiler = Profiler(stack.server.pid)
        self.mock = psutil.Process(stack.mock.pid)
        self.me = psutil.Process()
        self._t0 = 0.0
        self._mock0 = self._me0 = 0.0
        self._busy0: list[Any] = []
        self.result: dict[str, float] = {}

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def __enter__(self) -> MachineSampler:
        self.profiler.__enter__()
        self.server.__enter__()
        self._t0 = time.monotonic()
        self._busy0 = psutil.cpu_times(percpu=True)
        self._mock0, self._me0 = self._cpu(self.mock), self._cpu(self.me)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)
        self.profiler.__exit__(*exc)
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        cores = [_busy(a, b) for a, b in zip(self._busy0, psutil.cpu_times(percpu=True),
                                             strict=True)]
        series = self.server.series
        self.result = {
            "server_cpu_percent": round(self.server.cpu_percent, 1),
            "others_cpu_percent_mean": round(
                sum(x.others_cpu for x in series) / max(len(series), 1), 1),
            "others_cpu_percent_max": round(max((x.others_cpu for x in series), default=0), 1),
            "mock_cpu_percent": round(100 * (self._cpu(self.mock) - self._mock0) / elapsed, 1),
            "loadgen_cpu_percent": round(100 * (self._cpu(self.me) - self._me0) / elapsed, 1),
            **{f"core{i}_busy_percent": round(busy, 1) for i, busy in enumerate(cores)},
        }


# A "quiet" sampling interval: other work on the machine took less than this % of a core.
QUIET_OTHERS = 20.0


def quiet_latencies(tally: Tally, sampler: ResourceSampler) -> list[float]:
    """The latencies of turns that arrived in quiet intervals: on a machine shared with other
    work, what the server does when it has its core (read beside the full figures)."""
    return [latency for at, latency in zip(tally.arrivals, tally.latencies, strict=True)
            if sampler.others_at(at) < QUIET_OTHERS]


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1) if math.isfinite(seconds) else float("nan")


# -- load -------------------------------------------------------------------------------------
@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Reply] | None = None
        self._head: tuple[int, dict[str, str], int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
            del self._buffer[:end + 4]
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "content-length" not in headers:  # this client only reads sized bodies
                self._fail(ValueError(f"unsized response: {lines[0]}"))
                return
            self._head = (int(lines[0].split(" ", 2)[1]), headers,
                          int(headers["content-length"]))
        status, headers, length = self._head
        if len(self._buffer) >= length:
            body = bytes(self._buffer[:length])
            del self._buffer[:length]
            self._head = None
            if headers.get("connection", "").lower() == "close":
                self.closed = True
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(Reply(status, headers, body))

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def exchange(self, request: bytes) -> Reply:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self._waiter
        finally:
            self._waiter = None


class LeanHTTP:
    """A minimal keep-alive HTTP/1.1 JSON client for load generation.

    A load generator sharing a core with the mock must not become the bottleneck it is
    measuring: aiohttp's client spends ~0.3-0.5 ms of CPU per request, which at 1,000+
    requests/s is most of a core. This one writes pre-formatted requests on raw asyncio
    transports and reads Content-Length bodies: a few tens of microseconds per request.
    Connections are opened on demand (one per request in flight, up to `max_connections`)
    and reused when idle.
    """

    def __init__(self, base: str, *, timeout_s: float = 60.0,
                 max_connections: int = 1024) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port or 80)
        self.timeout_s = timeout_s
        # Below the server's listen backlog (uvicorn: 2048): when the server stalls, requests
        # wait here (and their latency counts) instead of overflowing the kernel's accept
        # queue, whose dropped SYNs come back only after 1, 3, 7 s retransmission timeouts.
        self._slots = asyncio.Semaphore(max_connections)
        self.idle: list[_Connection] = []
        self.opened = 0
        self.peak_open = 0
        self._open = 0

    async def request(self, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None) -> Reply:
        payload = b"" if body is None else json.dumps(body).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                f"{extra}\r\n")
        async with asyncio.timeout(self.timeout_s), self._slots:
            conn = await self._acquire()
            ok = False
            try:
                reply = await conn.exchange(head.encode() + payload)
                ok = True
                return reply
            finally:
                self._release(conn, ok)

    async def post(self, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> Reply:
        return await self.request("POST", path, body, headers)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return await self.request("GET", path, None, headers)

    async def _acquire(self) -> _Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
            self._open -= 1
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        self.opened += 1
        self._open += 1
        self.peak_open = max(self.peak_open, self._open)
        return conn

    def _release(self, conn: _Connection, ok: bool) -> None:
        if ok and not conn.closed:
            self.idle.append(conn)
            return
        self._open -= 1
        if conn.transport is not None:
            conn.transport.close()

    async def aclose(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()

    async def __aenter__(self) -> LeanHTTP:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def create_sessions(http: LeanHTTP, count: int, *, headers: dict[str, str] | None = None,
                          concurrency: int = 32) -> list[str]:
    """`count` fresh sessions of the weather agent; raises if the server refuses one."""
    ids: list[str] = []
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            reply = await http.post("/v1/agents/weather/sessions", {}, headers)
            if reply.status != 201:
                raise RuntimeError(f"session create: {reply.status} {reply.body[:200]!r}")
            ids.append(reply.json()["id"])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids


class SessionPool:
    """Idle sessions, each used for `TURNS_PER_SESSION` turns; never two turns at once on one
    session (so the double-texting lane never adds a wait the benchmark did not ask for)."""

    def __init__(self, http: LeanHTTP, ids: Iterable[str], *,
                 headers: dict[str, str] | None = None) -> None:
        self.http = http
        self.headers = headers
        self.idle: list[tuple[str, int]] = [(sid, 0) for sid in ids]
        self.created_on_demand = 0

    async def take(self) -> tuple[str, int]:
        if self.idle:
            return self.idle.pop()
        self.created_on_demand += 1
        [sid] = await create_sessions(self.http, 1, headers=self.headers, concurrency=1)
        return sid, 0

    def give_back(self, sid: str, used: int) -> None:
        if used < TURNS_PER_SESSION:
            self.idle.append((sid, used))


@dataclass
class Tally:
    """What happened to a stream of turns."""

    latencies: list[float] = field(default_factory=list)  # completed turns, seconds
    # run.started -> run.completed by the server's event timestamps: the run alone, without
    # HTTP, admission or the load generator's own delays.
    run_latencies: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # scheduled times of `latencies`
    statuses: Counter[int] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)  # "503 server_overloaded", …
    rejected_without_retry_after: int = 0
    retry_after_values: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    offered: int = 0
    sessions_created_on_demand: int = 0  # the pool ran dry: creating them was measured

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def finite_runs(self) -> list[float]:
        return [r for r in self.run_latencies if math.isfinite(r)]

    @property
    def rejections(self) -> int:
        return sum(self.rejected.values())

    def timeline(self, window_s: float = 2.0) -> list[tuple[str, str]]:
        """Rows of (window start, "turns p50 p99 max ms"): shows whether slow turns cluster
        (a stall: GC, a starved core) or spread (steady queueing)."""
        if not self.arrivals:
            return []
        first = min(self.arrivals)
        windows: dict[int, list[tuple[float, float]]] = {}
        for at, latency, run in zip(self.arrivals, self.latencies, self.run_latencies,
                                    strict=True):
            windows.setdefault(int((at - first) // window_s), []).append((latency, run))
        rows = []
        for w, pairs in sorted(windows.items()):
            turns = [t for t, _ in pairs]
            runs = [r for _, r in pairs if math.isfinite(r)]
            rows.append((f"{w * window_s:5.1f}",
                         f"{len(turns):6d} {ms(percentile(turns, 0.5)):7.1f} "
                         f"{ms(percentile(turns, 0.99)):7.1f} {ms(max(turns)):7.1f}   run "
                         f"{ms(percentile(runs, 0.5)):7.1f} {ms(percentile(runs, 0.99)):7.1f}"))
        return rows

    def summary(self, floor_s: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "offered": self.offered,
            "completed": self.completed,
            "rejected": self.rejections,
            "rejected_by_reason": dict(self.rejected),
            "rejected_without_retry_after": self.rejected_without_retry_after,
            "retry_after_s": dict(sorted(self.retry_after_values.items())),
            "errors": len(self.errors),
            "sessions_created_on_demand": self.sessions_created_on_demand,
            "p50_ms": ms(percentile(self.latencies, 0.50)),
            "p99_ms": ms(percentile(self.latencies, 0.99)),
            "max_ms": ms(max(self.latencies, default=float("nan"))),
            "run_p50_ms": ms(percentile(self.finite_runs, 0.50)),
            "run_p99_ms": ms(percentile(self.finite_runs, 0.99)),
        }
        if floor_s:
            out["p99_over_floor"] = round(percentile(self.latencies, 0.99) / floor_s, 3)
        return out


async def json_turn(http: LeanHTTP, pool: SessionPool, tally: Tally, scheduled: float, *,
                    headers: dict[str, str] | None = None) -> None:
    """One reference turn; latency counts from `scheduled` (the arrival time the load
    generator intended), so a late-running generator cannot hide queueing."""
    tally.offered += 1
    sid, used = await pool.take()
    try:
        reply = await http.post(f"/v1/sessions/{sid}/turns",
                                {"input": QUESTIONS[used % len(QUESTIONS)]}, headers)
        tally.statuses[reply.status] += 1
        if reply.status == 200:
            result = reply.json()
            if result["status"] == "completed":
                tally.latencies.append(time.perf_counter() - scheduled)
                tally.arrivals.append(scheduled)
                stamps = {e["type"]: e["ts"] for e in result["events"]}
                tally.run_latencies.append(stamps.get("run.completed", math.nan)
                                           - stamps.get("run.started", math.nan))
                used += 1
            else:
                tally.errors.append(f"run {result['status']}: {result.get('error')}")
        elif reply.status in (429, 503):
            problem = reply.json()
            tally.rejected[f"{reply.status} {problem['type'].rsplit(':', 1)[-1]}"] += 1
            value = reply.headers.get("retry-after", "")
            if value.isdigit() and int(value) >= 1 and reply.headers.get(
                    "content-type", "").startswith("application/problem+json"):
                tally.retry_after_values[int(value)] += 1
            else:
                tally.rejected_without_retry_after += 1
        else:
            tally.errors.append(f"turn {reply.status}: {reply.body[:200]!r}")
    except (OSError, TimeoutError, ValueError, KeyError) as exc:
        tally.errors.append(f"turn: {type(exc).__name__}: {exc}")
    finally:
        pool.give_back(sid, used)


async def open_loop(rate: float, duration_s: float,
                    fire: Callable[[float], Coroutine[Any, Any, None]], *,
                    seed: int = 1, drain_s: float = 60.0) -> float:
    """Poisson arrivals at `rate`/s for `duration_s`: each calls `fire(scheduled_time)` in its
    own task, whether or not earlier ones finished (an open loop: the server's slowness does
    not slow the offered load). Waits up to `drain_s` for stragglers, then cancels them;
    returns the time the arrivals took."""
    rng = random.Random(seed)
    tasks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    next_at = started + rng.expovariate(rate)
    end = started + duration_s
    while next_at < end:
        now = time.perf_counter()
        if next_at > now:
            await asyncio.sleep(next_at - now)
        # Launch every arrival that is due (a sleep may overshoot by more than one gap).
        now = time.perf_counter()
        while next_at <= now and next_at < end:
            task = asyncio.create_task(fire(next_at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += rng.expovariate(rate)
    offered_for = time.perf_counter() - started
    if tasks:
        _, late = await asyncio.wait(set(tasks), timeout=drain_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    return offered_for


class LoopLag:
    """How late this process's event loop wakes from a 10 ms sleep, while in `async with`:
    a load generator that lags inflates the latencies it reports."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            self.samples.append(time.perf_counter() - started - 0.01)

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def summary(self) -> dict[str, float]:
        return {"loadgen_lag_p50_ms": ms(percentile(self.samples, 0.5)),
                "loadgen_lag_p99_ms": ms(percentile(self.samples, 0.99)),
                "loadgen_lag_max_ms": ms(max(self.samples, default=float("nan")))}


async def admin_stats(http: LeanHTTP) -> dict[str, Any]:
    reply = await http.get("/v1/admin/stats")
    body: dict[str, Any] = reply.json()
    return body


def run(coro: Awaitable[Any]) -> Any:
    """Run the load generator on uvloop when available (less client CPU on core 1)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(_wrap(coro))
    return uvloop.run(_wrap(coro))


async def _wrap(coro: Awaitable[Any]) -> Any:
    return await coro


# -- reporting --------------------------------------------------------------------------------
def print_table(title: str, rows: Iterable[tuple[str, Any]]) -> None:
    rows = list(rows)
    width = max((len(k) for k, _ in rows), default=10)
    print(f"\n== {title}")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def print_result(result: dict[str, Any]) -> None:
    """The final line: one JSON object, for scripts and issue notes."""
    print(json.dumps(result, default=str), flush=True)
