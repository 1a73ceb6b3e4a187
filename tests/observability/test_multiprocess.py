"""Multiprocess mode: several worker processes, one aggregated /metrics.

prometheus-client's multiprocess switch is process-wide, so every worker here is a real
subprocess; the test process only reads the shared files.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from roost.observability import prepare_multiprocess_dir
from roost.observability.metrics import multiprocess_exposition
from tests.observability import parse, value

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent("""
    import asyncio, sys
    from roost.observability import Observability, ObservabilityConfig
    from roost.observability.metrics import multiprocess_exposition
    from tests.observability import make_run, one_turn, parse, value

    path, index, turns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    async def main() -> None:
        obs = Observability(ObservabilityConfig(
            multiprocess_dir=path, run_log=False, stats_interval=0.02))
        for i in range(turns):
            one_turn(obs, make_run(f"w{index}-{i}"))
        obs.hooks.run_start(make_run(f"w{index}-live"), model="demo")  # stays in flight
        rejections = {"queue_full": 2}
        obs.register_stats("runtime", lambda: {
            "queue_depth": {"acme": {"high": index + 1}},
            "admission_rejections_total": rejections,
            "breaker_state": {"openai": "open" if index else "closed"},
            f"worker_{index}_up": 1,
        })
        await obs.start()
        # No scrape in this worker: the background refresher mirrors its statistics.
        while value(parse(multiprocess_exposition(path).decode()), f"roost_worker_{index}_up") != 1:
            await asyncio.sleep(0.01)
        obs.metrics_response()          # a scrape refreshes too
        rejections["queue_full"] = 5    # counted as +3 at the next refresh, not +5
        obs.metrics_response()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await obs.shutdown()

    asyncio.run(main())
""")


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, text=True, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
    )


def test_workers_aggregate_and_dead_workers_drop_their_live_gauges(tmp_path: Path) -> None:
    path = str(tmp_path / "prom")
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "counter_999.db").write_bytes(b"stale")  # from a previous server
    prepare_multiprocess_dir(path)
    assert list((tmp_path / "prom").iterdir()) == []

    workers = [spawn("-c", WORKER, path, str(i), str(turns)) for i, turns in ((0, 3), (1, 5))]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        live = parse(multiprocess_exposition(path).decode())
        assert value(live, "roost_runs_total", agent="support", outcome="completed") == 8
        assert value(live, "roost_tool_calls_total", tool="search", outcome="ok") == 8
        assert value(live, "roost_model_calls_total", provider="openai", model="gpt-4o-mini",
                     outcome="ok") == 16
        assert value(live, "roost_runs_in_flight") == 2
        assert value(live, "roost_queue_depth", tenant="acme", priority="high") == 1 + 2
        assert value(live, "roost_admission_rejections_total", reason="queue_full") == 5 + 5
        assert value(live, "roost_breaker_state", provider="openai") == 2  # the worst worker

        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("\n")
            worker.stdin.flush()
            assert worker.wait(timeout=20) == 0
        after = parse(multiprocess_exposition(path).decode())
        # Counters survive their workers; live gauges leave with them.
        assert value(after, "roost_runs_total", agent="support", outcome="completed") == 8
        assert value(after, "roost_runs_in_flight") == 0
        assert value(after, "roost_queue_depth", tenant="acme", priority="high") == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.communicate()  # reaps it and closes the pipes


APP = textwrap.dedent("""
    import os
    from fastapi import FastAPI
    from fastapi.responses import Response
    from roost.observability import Observability, ObservabilityConfig

    obs = Observability(ObservabilityConfig(access_log=False))
    api = FastAPI()

    @api.get("/work/{item}")
    async def work(item: str) -> dict[str, int]:
        return {"pid": os.getpid()}

    @api.get("/metrics")
    async def metrics() -> Response:
        body, content_type = obs.metrics_response()
        return Response(body, media_type=content_type)

    app = obs.asgi_middleware(api)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.e2e
def test_uvicorn_workers_share_one_exposition(tmp_path: Path) -> None:
    (tmp_path / "mp_app.py").write_text(APP)
    prom = tmp_path / "prom"
    prepare_multiprocess_dir(str(prom))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "mp_app:app", "--workers", "2", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        cwd=tmp_path, env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom),
                           "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/work/warmup", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, "uvicorn exited"
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.1)

        def hit(i: int) -> int:
            # A fresh connection each time, so the kernel spreads them over the workers.
            response = httpx.get(f"{base}/work/{i}", headers={"Connection": "close"}, timeout=5)
            return int(response.json()["pid"])

        pids: set[int] = set()
        sent = 1  # the warm-up
        with ThreadPoolExecutor(8) as pool:
            while len(pids) < 2 and sent < 400:
                pids.update(pool.map(hit, range(40)))
                sent += 40
        assert len(pids) == 2, "requests never reached the second worker"

        text = httpx.get(f"{base}/metrics", timeout=5).text
        assert value(parse(text), "roost_http_requests_total", route="/work/{item}",
                     method="GET", status="200") == sent
    finally:
        server.terminate()
        server.wait(timeout=20)
