"""CPU cost per call of `OpenAICompatModel`, against the mock server on another core.

    .venv/bin/python bench/bench_provider.py                 # 2000 calls, 32 at a time
    .venv/bin/python bench/bench_provider.py -n 5000 -c 64 --profile

The mock runs in a subprocess pinned to core 1 (`taskset -c 1`, skipped when missing) and
this process is pinned to core 0, so the figure is the client's own CPU: `time.process_time()`
across N calls, divided by N. The request is one turn's worth: a system prompt, a user
message and one tool offered; calls alternate between the turn's first step (answered
with a tool call) and its second (a tool result in, text out). Budget: ~0.15-0.3 ms per non-streamed call (DESIGN.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from roost.models.base import Message, ModelRequest, ToolCall, ToolSpec, complete  # noqa: E402
from roost.models.openai_compat import OpenAICompatModel  # noqa: E402

TOOLS = [
    ToolSpec(
        name="get_weather",
        description="Current weather for a city.",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}, "units": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    )
]
# The two model calls of the reference turn: the first answers with a tool call, the second
# (after the tool result) with text.
FIRST_STEP = [
    Message(role="system", content="You are a helpful assistant. Answer briefly."),
    Message(role="user", content="What is the weather in Paris today?"),
]
SECOND_STEP = [
    *FIRST_STEP,
    Message(
        role="assistant",
        tool_calls=[ToolCall(id="call_1", name="get_weather", arguments='{"city":"Paris"}')],
    ),
    Message(role="tool", tool_call_id="call_1", name="get_weather", content="Sunny, 21 C"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def mock_server(port: int, latency_ms: float) -> Iterator[str]:
    command = [
        sys.executable,
        "-m",
        "roost.testing.mock_openai",
        "--port",
        str(port),
        "--latency-ms",
        str(latency_ms),
    ]
    if shutil.which("taskset"):
        command = ["taskset", "-c", "1", *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"mock server did not start: {line!r}")
        yield line.split("listening on", 1)[1].strip() + "/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def run_calls(model: OpenAICompatModel, n: int, concurrency: int, stream: bool) -> None:
    requests = [
        ModelRequest(messages=messages, tools=TOOLS, stream=stream)
        for messages in (FIRST_STEP, SECOND_STEP)
    ]
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await complete(model, requests[i & 1])

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())


async def measure(base_url: str, args: argparse.Namespace) -> None:
    model = OpenAICompatModel("mock-gpt", base_url=base_url, api_key="bench")
    try:
        for stream in (False, True):
            label = "streamed" if stream else "non-streamed"
            await run_calls(model, args.warmup, args.concurrency, stream)
            cpu, wall = time.process_time(), time.perf_counter()
            await run_calls(model, args.n, args.concurrency, stream)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(
                f"{label:>13}: {cpu / args.n * 1000:.3f} ms CPU/call, "
                f"{args.n / wall:,.0f} calls/s, {wall / args.n * args.concurrency * 1000:.2f} ms "
                f"mean latency ({args.n} calls, concurrency {args.concurrency})"
            )
    finally:
        await model.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="calls per mode")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="mock latency")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    parser.add_argument("--profile", action="store_true", help="pyinstrument the client")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    run = asyncio.run
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            run = uvloop.run
    print(f"client loop: {'asyncio' if run is asyncio.run else 'uvloop'}")

    with mock_server(free_port(), args.latency_ms) as base_url:
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(async_mode="disabled", interval=0.0002)
            with profiler:
                run(measure(base_url, args))
            profiler.print(show_all=False)
        else:
            run(measure(base_url, args))


if __name__ == "__main__":
    main()
