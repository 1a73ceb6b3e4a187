"""Takeover after SIGKILL: how long from an instance's death to its runs resumed elsewhere.

    python bench/takeover.py                                    # PostgreSQL, lease 10 s
    python bench/takeover.py --store redis://127.0.0.1:6379/0 --runs 50 --rounds 3
    python bench/takeover.py --lease-ttl 3

Two `roost serve` instances share one store. Each round starts `--runs` turns on instance A
whose tool sleeps (so every run is mid-tool), waits until every tool has started, kills A
with SIGKILL, and polls each run's record through instance B until its `attempt` is 2 (the
survivor claimed it and resumed it from the log). Reports, per run, the time from the kill
to that moment: p50, p99 and max against the target `lease_ttl_s + 2 s`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, percentile, wait_for  # noqa: E402

AGENT = '''
import asyncio, os
from pathlib import Path
from roost import Agent, tool

@tool
async def slow_task(topic: str) -> str:
    """Work slowly.

    Args:
        topic: What to work on.
    """
    with Path(os.environ["MARKER"]).open("a") as f:
        f.write(topic + "\\n")
    await asyncio.sleep(float(os.environ.get("TOOL_S", "1")))
    return "done " + topic

worker = Agent(name="worker", model="demo", tools=[slow_task])
'''


def store_section(url: str) -> str:
    tag = uuid.uuid4().hex[:10]
    if url.startswith("redis"):
        return f'[store]\nurl = "{url}"\noptions = {{ prefix = "tk{tag}:" }}\n'
    return f'[store]\nurl = "{url}"\noptions = {{ schema = "tk_{tag}" }}\n'


def serve(folder: Path, name: str, config: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    path = folder / f"{name}.toml"
    path.write_text(config.replace("[server]\n", f"[server]\nport = {port}\n", 1))
    log = (folder / f"{name}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "roost.cli", "serve", str(folder / "agent.py"),
                             "--config", str(path)], cwd=folder, env={**os.environ, **env},
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/healthz")
    return proc, url


def one_round(folder: Path, config: str, runs: int, tool_s: float) -> list[float]:
    marker = folder / f"marker-{uuid.uuid4().hex[:6]}.txt"
    env = {"MARKER": str(marker), "TOOL_S": str(tool_s)}
    a, a_url = serve(folder, "a", config, env)
    b, b_url = serve(folder, "b", config, env)
    try:
        sessions = [httpx.post(f"{a_url}/v1/agents/worker/sessions", json={}).json()["id"]
                    for _ in range(runs)]
        pool = concurrent.futures.ThreadPoolExecutor(runs)
        for i, session in enumerate(sessions):
            pool.submit(_post_quietly, f"{a_url}/v1/sessions/{session}/turns", f"work on T{i}")
        deadline = time.monotonic() + 60
        while not marker.exists() or len(marker.read_text().splitlines()) < runs:
            if time.monotonic() > deadline:
                raise SystemExit("the runs never reached their tools")
            time.sleep(0.02)
        run_ids = [httpx.get(f"{b_url}/v1/sessions/{s}/events").json()["items"][0]["run_id"]
                   for s in sessions]
        killed = time.monotonic()
        a.send_signal(signal.SIGKILL)
        a.wait()
        resumed: dict[str, float] = {}
        with httpx.Client(base_url=b_url, timeout=5) as http:
            while len(resumed) < len(run_ids):
                if time.monotonic() - killed > 120:
                    raise SystemExit(f"only {len(resumed)} of {runs} runs were taken over")
                for run_id in run_ids:
                    if run_id not in resumed and http.get(f"/v1/runs/{run_id}").json()["attempt"] >= 2:
                        resumed[run_id] = time.monotonic() - killed
                time.sleep(0.02)
        pool.shutdown(wait=True)
        return list(resumed.values())
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)


def _post_quietly(url: str, text: str) -> None:
    with contextlib.suppress(httpx.HTTPError):  # its instance was killed under it
        httpx.post(url, json={"input": text}, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lease-ttl", type=float, default=10.0)
    parser.add_argument("--takeover-interval", type=float, default=1.0)
    parser.add_argument("--tool-s", type=float, default=30.0,
                        help="how long each run's tool takes: long enough to be mid-tool at the kill")
    args = parser.parse_args()
    runtime = (f"[server]\nshutdown_grace_s = 1\n[runtime]\nlease_ttl_s = {args.lease_ttl}\n"
               f"takeover_interval_s = {args.takeover_interval}\n")
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "agent.py").write_text(AGENT)
        for _ in range(args.rounds):  # a fresh schema (prefix) per round
            samples.extend(one_round(folder, store_section(args.store) + runtime, args.runs,
                                     args.tool_s))
    target = args.lease_ttl + 2
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    print(f"store {args.store.split('://')[0]}, lease {args.lease_ttl:g} s, "
          f"scan every {args.takeover_interval:g} s, {len(samples)} runs killed mid-tool")
    print(f"kill → resumed: p50 {p50:.2f} s, p99 {p99:.2f} s, max {max(samples):.2f} s "
          f"(target p99 ≤ {target:g} s: {'met' if p99 <= target else 'MISSED'})")


if __name__ == "__main__":
    main()
