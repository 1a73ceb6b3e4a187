"""CPU and latency per MCP tool call through `MCPToolset`, over stdio and streamable HTTP.

    python bench/bench_mcp.py --calls 1000

The server (bench/mcp_echo_server.py, one `echo` tool) runs in its own process pinned to
core 1; this process (the Roost side: `MCPTool.call`, the SDK's client session and
transport) is pinned to core 0 and its CPU is read from `time.process_time()`, so the
figures are Roost's cost per call, not the server's. Calls are sequential: latency is one
round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from roost.tools.base import ToolContext
from roost.tools.mcp import MCPToolset

HERE = Path(__file__).resolve().parent
SERVER = str(HERE / "mcp_echo_server.py")


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") else argv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def measure(toolset: MCPToolset, calls: int) -> dict[str, float]:
    await toolset.start()
    try:
        tool = (await toolset.list_tools())[0]
        ctx = ToolContext(run_id="run", session_id="ses", tenant="t", agent="a", call_id="c")
        for _ in range(50):  # warm up
            await tool.call('{"text": "warm"}', ctx)
        latencies = []
        cpu_before = time.process_time()
        for _ in range(calls):
            started = time.perf_counter()
            assert await tool.call('{"text": "hello"}', ctx) == "hello"
            latencies.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu_before
    finally:
        await toolset.close()
    latencies.sort()
    return {"cpu_ms_per_call": round(cpu / calls * 1000, 3),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    if shutil.which("taskset"):
        os.sched_setaffinity(0, {0})
    results = {}
    stdio = MCPToolset.stdio("taskset", "-c", "1", sys.executable, SERVER, name="echo") \
        if shutil.which("taskset") else MCPToolset.stdio(sys.executable, SERVER, name="echo")
    results["stdio"] = asyncio.run(measure(stdio, args.calls))
    port = free_port()
    server = subprocess.Popen(pinned(1, [sys.executable, SERVER, "--port", str(port)]))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        results["http"] = asyncio.run(measure(MCPToolset.http(f"http://127.0.0.1:{port}/mcp",
                                                              name="echo"), args.calls))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
