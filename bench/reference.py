"""The reference scenario: server CPU per turn against a mock model.

    python bench/reference.py                       # SQLite, 32 clients, 100 sessions x 3 turns
    python bench/reference.py --store memory:// --sessions 300 --latency-ms 50
    python bench/reference.py --store postgresql://postgres@127.0.0.1:5432/test
    python bench/reference.py --auth                # [auth] on: every request has an API key

Starts the mock OpenAI-compatible server and the load generator pinned to core 1 and a
`roost serve` of `examples/weather.py` (its model pointed at the mock) pinned to core 0,
then reports the server's CPU ms per turn (from /proc, user + system), turns/s, latency
p50/p99 against the floor (two model calls = 2 x latency), RSS and errors. Each turn is the
reference turn: HTTP request → model call → one tool call → model call → answer, persisted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") else argv


def wait_for(url: str, timeout: float = 20.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def client(base: str, http: aiohttp.ClientSession, sessions: asyncio.Queue[int],
                 turns: int, latencies: list[float], errors: list[str],
                 route: str = "native") -> None:
    questions = ["What's the weather in Paris?", "And in Tokyo?", "How about New York?"]
    if route.startswith("openai"):
        await openai_client(base, http, sessions, turns, latencies, errors, route, questions)
        return
    while True:
        try:
            sessions.get_nowait()
        except asyncio.QueueEmpty:
            return
        async with http.post(f"{base}/v1/agents/weather/sessions", json={}) as response:
            if response.status != 201:
                errors.append(f"create {response.status}")
                continue
            session_id = (await response.json())["id"]
        for turn in range(turns):
            started = time.perf_counter()
            async with http.post(f"{base}/v1/sessions/{session_id}/turns",
                                 json={"input": questions[turn % 3]}) as response:
                body = await response.read()
                if response.status != 200:
                    errors.append(f"turn {response.status}: {body[:200]!r}")
                    continue
                result = json.loads(body)
                if result["status"] != "completed":
                    errors.append(f"run {result['status']}: {result.get('error')}")
                    continue
            latencies.append(time.perf_counter() - started)


async def openai_client(base: str, http: aiohttp.ClientSession, sessions: asyncio.Queue[int],
                        turns: int, latencies: list[float], errors: list[str], route: str,
                        questions: list[str]) -> None:
    """The same conversations through `/v1/chat/completions`: `openai` creates the session
    as the native route does and continues it with `X-Roost-Session-Id`; `openai-stateless`
    sends the whole history every turn (a fresh, seeded session per request)."""
    while True:
        try:
            sessions.get_nowait()
        except asyncio.QueueEmpty:
            return
        headers = {}
        if route == "openai":
            async with http.post(f"{base}/v1/agents/weather/sessions", json={}) as response:
                if response.status != 201:
                    errors.append(f"create {response.status}")
                    continue
                headers["X-Roost-Session-Id"] = (await response.json())["id"]
        messages: list[dict[str, str]] = []
        for turn in range(turns):
            question = {"role": "user", "content": questions[turn % 3]}
            body = {"model": "weather",
                    "messages": [*messages, question] if route == "openai-stateless" else [question]}
            started = time.perf_counter()
            async with http.post(f"{base}/v1/chat/completions", json=body,
                                 headers=headers) as response:
                raw = await response.read()
                if response.status != 200:
                    errors.append(f"turn {response.status}: {raw[:200]!r}")
                    continue
                answer = json.loads(raw)["choices"][0]["message"]
            latencies.append(time.perf_counter() - started)
            messages += [question, {"role": "assistant", "content": answer["content"]}]


async def load(base: str, concurrency: int, sessions: int, turns: int,
               route: str = "native",
               headers: dict[str, str] | None = None) -> tuple[list[float], list[str], float]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(sessions):
        queue.put_nowait(i)
    latencies: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(base, http, queue, turns, latencies, errors, route)
                               for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=None, help="store URL (default: a fresh SQLite file)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--warmup-sessions", type=int, default=20)
    parser.add_argument("--config-extra", default="", help="TOML appended to the server config")
    parser.add_argument("--observability", choices=["off", "on", "full"], default="on",
                        help="off: no metrics/logs/traces; on: defaults (metrics, JSON access "
                             "and run logs); full: on + tracing exported over OTLP")
    parser.add_argument("--route", choices=["native", "openai", "openai-stateless"],
                        default="native",
                        help="native: POST /v1/sessions/{id}/turns; openai: "
                             "/v1/chat/completions continuing the session by header; "
                             "openai-stateless: the whole history every turn")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--auth", action="store_true",
                        help="[auth] on; the clients present an API key (role user)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="roost-bench-"))
    store = args.store or f"sqlite:///{workdir}/roost.db"
    mock_port, server_port, sink_port = free_port(), free_port(), free_port()
    observability = {
        "off": "[observability]\nmetrics = false\naccess_log = false\nrun_log = false\n"
               "tracing = false\n",
        "on": "[observability]\nlog_format = \"json\"\n",
        "full": "[observability]\nlog_format = \"json\"\ntracing = true\n",
    }[args.observability]
    config = workdir / "roost.toml"
    config.write_text(f"""
[server]
port = {server_port}
[store]
url = "{store}"
[providers.mock]
type = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"
[models.mock]
provider = "mock"
model = "gpt-mock"
[agents.weather]
model = "mock"
{observability}
{"[auth]" + chr(10) + "enabled = true" if args.auth else ""}
{args.config_extra}
""")
    headers: dict[str, str] = {}
    if args.auth:
        created = subprocess.run([PYTHON, "-m", "roost.cli", "keys", "create", "--tenant",
                                  "default", "--role", "user", "--name", "bench", "--config",
                                  str(config)], cwd=workdir, capture_output=True, text=True,
                                 check=True)
        headers["Authorization"] = f"Bearer {created.stdout.strip().splitlines()[-1]}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{sink_port}/v1/traces"}
    sink = subprocess.Popen(pinned(1, [PYTHON, str(ROOT / "bench" / "otlp_sink.py"), "--port",
                                       str(sink_port)]), env=env)
    mock = subprocess.Popen(pinned(1, [PYTHON, "-m", "roost.testing.mock_openai", "--port",
                                       str(mock_port), "--latency-ms", str(args.latency_ms)]),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # ROOST_BENCH_PROFILE=out.txt: record the server with py-spy (collapsed stacks).
    profile = os.environ.get("ROOST_BENCH_PROFILE")
    prefix = ["py-spy", "record", "--format", "raw", "--rate", "1000", "--gil", "--nonblocking", "-o",
              profile, "--"] if profile else []
    with open(workdir / "server.out", "w") as out, open(workdir / "server.log", "w") as err:
        server = subprocess.Popen(pinned(0, [*prefix, PYTHON, "-m", "roost.cli", "serve",
                                             str(ROOT / "examples" / "weather.py"), "--config",
                                             str(config), "--log-level", "warning"]),
                                  env=env, cwd=workdir, stdout=out, stderr=err)
    try:
        wait_for(f"http://127.0.0.1:{mock_port}/v1/models")
        wait_for(f"http://127.0.0.1:{server_port}/healthz")
        base = f"http://127.0.0.1:{server_port}"
        if shutil.which("taskset"):  # the load generator shares core 1 with the mock
            os.sched_setaffinity(0, {1})
        asyncio.run(load(base, args.concurrency, args.warmup_sessions, args.turns, args.route,
                         headers))
        process = psutil.Process(server.pid)
        if profile:  # measure the Python child, not py-spy
            process = next(p for p in process.children(recursive=True) if "python" in p.name())
        before = process.cpu_times()
        latencies, errors, elapsed = asyncio.run(load(base, args.concurrency, args.sessions,
                                                      args.turns, args.route, headers))
        after = process.cpu_times()
        rss = process.memory_info().rss
    finally:
        if profile:  # stop the profiled child; py-spy then writes its output and exits
            for child in psutil.Process(server.pid).children(recursive=True):
                child.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        for proc in (server, mock, sink):
            proc.send_signal(signal.SIGTERM)
        for proc in (server, mock, sink):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    cpu = (after.user - before.user) + (after.system - before.system)
    turns = len(latencies)
    floor = 2 * args.latency_ms / 1000
    result = {
        "store": store.split("://")[0],
        "route": args.route,
        "observability": args.observability,
        "auth": args.auth,
        "turns": turns,
        "errors": len(errors),
        "cpu_ms_per_turn": round(cpu / max(turns, 1) * 1000, 3),
        "turns_per_s": round(turns / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "floor_ms": floor * 1000,
        "p99_over_floor": round(percentile(latencies, 0.99) / floor, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
        "rss_mib": round(rss / 2**20, 1),
        "concurrency": args.concurrency,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")
        for error in errors[:5]:
            print("error:", error)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
