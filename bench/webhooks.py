"""CPU per webhook delivery: the dispatcher's own cost (claim, read the run, sign, POST,
record), with the receiver in another process.

    python bench/webhooks.py                                  # SQLite, 2,000 deliveries
    python bench/webhooks.py --store postgresql://postgres@127.0.0.1:5432/test -n 1000

Stores N completed runs with an armed delivery each, then lets one Runtime's dispatcher
deliver them all to a stdlib HTTP receiver (a subprocess answering 204) and reports this
process's CPU ms per delivery (user + system) and deliveries/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from roost import Runtime, Settings
from roost.loader import load_agents
from roost.runtime.handle import new_id
from roost.sessions.records import RunRecord, Session
from roost.testing.live import free_port

ROOT = Path(__file__).resolve().parents[1]
RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(204); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


async def main(store_url: str, n: int, port: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]  # a schema / key prefix of its own, dropped nowhere: small
    options = ({"schema": f"bench_{tag}"} if store_url.startswith("postgres")
               else {"prefix": f"bench{tag}:"} if store_url.startswith("redis") else {})
    settings = Settings(store={"url": store_url, "options": options}, webhooks={
        "allow_loopback": True, "poll_interval_s": 0.01, "concurrency": 64,
        "per_tenant_concurrency": 64, "worker": False})
    runtime = Runtime(settings, load_agents([str(ROOT / "examples" / "weather.py")]))
    await runtime.start()
    try:
        session = Session(id=new_id("ses"), tenant="bench", agent="weather")
        await runtime.store.create_session(session)
        url = f"http://127.0.0.1:{port}/hook"
        for _ in range(n):
            run = RunRecord(id=new_id("run"), session_id=session.id, tenant="bench",
                            agent="weather", status="completed", input="hi", output="x" * 200)
            await runtime.store.put_run(run)
            await runtime.webhooks.arm("bench", run.id, url, ["*"])
        runtime.webhooks.config = runtime.webhooks.config.model_copy(update={"worker": True})
        cpu, wall = time.process_time(), time.perf_counter()
        task = asyncio.create_task(runtime.webhooks.deliver_forever())
        while runtime.webhooks.stats.delivered < n:  # noqa: ASYNC110 - a bench's poll
            await asyncio.sleep(0.01)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return {"deliveries": n, "cpu_ms_per_delivery": round(cpu / n * 1e3, 3),
                "deliveries_per_s": round(n / wall, 1),
                "attempts": runtime.webhooks.stats.attempts,
                "retried": runtime.webhooks.stats.retries}
    finally:
        await runtime.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default=None)
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = args.store or f"sqlite:///{tmp}/roost.db"
            result = asyncio.run(main(url, args.n, port))
            print(json.dumps({"store": url.split(":")[0], **result}))
    finally:
        receiver.kill()
