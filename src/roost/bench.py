"""`roost bench`: the reference scenario on this machine, or against a running deployment.

    roost bench                                  # a local server + the mock model
    roost bench --sessions 300 --latency-ms 100
    roost bench --url http://roost.internal:8000 --agent weather

Locally it starts the mock OpenAI-compatible model (`roost.testing.mock_openai`, a fixed
latency per call) and a `roost serve` of the bundled `weather` example pointed at it, in
separate processes, then drives sessions of reference turns (HTTP request → model call → one
tool call → model call → answer, persisted) from `concurrency` clients. It reports the server's
CPU per turn (user + system, from /proc), turns/s, latency p50/p99 against the floor (two model
calls = 2 × latency: what no server can beat), the server's RSS and the errors. With `--url`
the server is yours: CPU and RSS are not measured and there is no known floor.

The same measurement as `bench/reference.py` in a checkout (which adds core pinning, tracing
and profiling), minus what needs the repository. Needs the `testing` extra (aiohttp).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

QUESTIONS = ("What's the weather in Paris?", "And in Tokyo?", "How about New York?")


@dataclass
class BenchResult:
    turns: int
    errors: int
    turns_per_s: float
    p50_ms: float
    p99_ms: float
    floor_ms: float | None = None
    p99_over_floor: float | None = None
    cpu_ms_per_turn: float | None = None
    rss_mib: float | None = None
    store: str | None = None
    first_errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError:
        raise ImportError("roost bench needs aiohttp: pip install 'roost[testing]'") from None
    return aiohttp


async def _client(base: str, agent: str, http: Any, sessions: asyncio.Queue[int], turns: int,
                  latencies: list[float], errors: list[str], done: Callable[[], None],
                  failures: tuple[type[Exception], ...]) -> None:
    while True:
        try:
            sessions.get_nowait()
        except asyncio.QueueEmpty:
            return
        finished = 0
        try:
            async with http.post(f"{base}/v1/agents/{agent}/sessions", json={}) as response:
                body = await response.json(content_type=None)
                if response.status != 201:
                    errors.append(f"create session: {response.status} {body.get('detail', '')}")
                    continue
                session_id = body["id"]
            for turn in range(turns):
                started = time.perf_counter()
                async with http.post(f"{base}/v1/sessions/{session_id}/turns",
                                     json={"input": QUESTIONS[turn % len(QUESTIONS)]}) as response:
                    body = await response.json(content_type=None)
                    if response.status != 200:
                        errors.append(f"turn: {response.status} {body.get('detail', '')}")
                    elif body["status"] != "completed":
                        error = body.get("error") or {}
                        errors.append(f"run {body['status']}: {error.get('message')}")
                    else:
                        latencies.append(time.perf_counter() - started)
                finished += 1
                done()
        except failures as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            for _ in range(turns - finished):  # the bar still reaches its end
                done()


async def drive(base: str, *, agent: str, sessions: int, turns: int, concurrency: int,
                progress: Callable[[], None] = lambda: None
                ) -> tuple[list[float], list[str], float]:
    """Run `sessions` × `turns` turns from `concurrency` clients: (latencies, errors, seconds)."""
    aiohttp = _aiohttp()
    # A refused connection or a non-JSON answer is one error of the run, not its end.
    failures = (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError, KeyError)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(sessions):
        queue.put_nowait(i)
    latencies: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(_client(base, agent, http, queue, turns, latencies, errors,
                                          progress, failures))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def summarise(latencies: list[float], errors: list[str], elapsed: float, *,
              floor_s: float | None = None) -> BenchResult:
    p99 = percentile(latencies, 0.99)
    return BenchResult(
        turns=len(latencies), errors=len(errors),
        turns_per_s=round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        p50_ms=round(percentile(latencies, 0.50) * 1000, 1), p99_ms=round(p99 * 1000, 1),
        floor_ms=round(floor_s * 1000, 1) if floor_s else None,
        p99_over_floor=round(p99 / floor_s, 3) if floor_s and latencies else None,
        first_errors=errors[:5])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)  # polling a server coming up: there is no event to wait on
    raise RuntimeError(f"{url} did not come up in {timeout:.0f} s")


class LocalDeployment:
    """The mock model and a `roost serve` of the weather example, in child processes."""

    def __init__(self, *, latency_ms: float, store: str | None) -> None:
        from roost.loader import bundled_examples

        self.workdir = Path(tempfile.mkdtemp(prefix="roost-bench-"))
        self.store = store or f"sqlite:///{self.workdir}/roost.db"
        self.latency_ms = latency_ms
        weather = [p for p in bundled_examples() if p.stem == "weather"]
        if not weather:
            raise RuntimeError("the bundled weather example is missing from this install")
        mock_port, self.port = _free_port(), _free_port()
        config = self.workdir / "roost.toml"
        config.write_text(f'''load = ["{weather[0]}"]
[server]
port = {self.port}
[store]
url = "{self.store}"
[providers.mock]
base_url = "http://127.0.0.1:{mock_port}/v1"
[models.mock]
provider = "mock"
model = "gpt-mock"
[agents.weather]
model = "mock"
[observability]
log_format = "json"
''')
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
        quiet = subprocess.DEVNULL
        self.mock = subprocess.Popen(
            [sys.executable, "-m", "roost.testing.mock_openai", "--port", str(mock_port),
             "--latency-ms", str(latency_ms)], stdout=quiet, stderr=quiet, env=env)
        self.server = subprocess.Popen(
            [sys.executable, "-m", "roost", "serve", "--config", str(config),
             "--log-level", "warning"], stdout=quiet, stderr=quiet, env=env, cwd=self.workdir)
        try:
            _wait_for(f"http://127.0.0.1:{mock_port}/v1/models", self.mock)
            _wait_for(f"{self.url}/healthz", self.server)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        import shutil

        for process in (self.server, self.mock):
            if process.poll() is None:
                process.terminate()
        for process in (self.server, self.mock):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def run(*, url: str | None, agent: str, sessions: int, turns: int, concurrency: int,
        latency_ms: float, warmup_sessions: int, store: str | None,
        progress: Callable[[int], Callable[[], None]] = lambda total: lambda: None
        ) -> BenchResult:
    """The whole benchmark; `progress(total)` returns the callback each finished turn calls."""
    _aiohttp()
    local = None if url else LocalDeployment(latency_ms=latency_ms, store=store)
    base = url.rstrip("/") if url else local.url  # type: ignore[union-attr]
    try:
        if warmup_sessions:
            asyncio.run(drive(base, agent=agent, sessions=warmup_sessions, turns=turns,
                              concurrency=concurrency))
        pid = local.server.pid if local else None
        before = cpu_seconds(pid) if pid else None
        latencies, errors, elapsed = asyncio.run(drive(
            base, agent=agent, sessions=sessions, turns=turns, concurrency=concurrency,
            progress=progress(sessions * turns)))
        after = cpu_seconds(pid) if pid else None
        rss = rss_bytes(pid) if pid else None
    finally:
        if local is not None:
            local.close()
    result = summarise(latencies, errors, elapsed,
                       floor_s=2 * latency_ms / 1000 if local else None)
    if before is not None and after is not None and result.turns:
        result.cpu_ms_per_turn = round((after - before) / result.turns * 1000, 3)
    if rss is not None:
        result.rss_mib = round(rss / 2**20, 1)
    if local is not None:
        result.store = local.store.split("://")[0]
    return result
