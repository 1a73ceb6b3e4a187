"""Cost of authentication and authorization: what auth adds to a request, and what a refusal
costs next to today's 503.

    .venv/bin/python bench/bench_auth.py [-n 20000]

Prints CPU microseconds per call (best of 3 rounds: a noisy shared machine stays out):

- key check, cached: `ApiKeyAuthenticator.cached` on a verified key (sha256 + dict lookups);
- edge, auth off / on: `AuthEdge` in front of an app that answers nothing, for a turn
  (`POST /v1/sessions/{id}/turns`): route match, header scan, key check, permission; then
  with the turn's audit record queued for the store (the batch write is not included);
- whole app refusals, in process (ASGI, no sockets): 503 (the runtime draining, today's
  cheapest refusal of a turn), 401 (no key), 403 (a viewer's turn); the last row with the
  audit record written as JSON to /dev/null, the way a production log would carry it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import IO, Any

from roost import Agent, Runtime, Settings
from roost.auth.auditlog import MemoryAuditStore
from roost.auth.chain import Auth
from roost.auth.config import AuthConfig
from roost.auth.edge import AuthEdge
from roost.auth.keys import MemoryKeyStore, new_key
from roost.server.app import create_app
from roost.testing import ScriptedModel


def best_of(rounds: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(rounds))


async def asgi_cost(app: Any, path: str, headers: list[tuple[bytes, bytes]], n: int,
                    body: bytes = b'{"input": "hi"}') -> tuple[float, int]:
    status = 0
    scope_base = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
                  "query_string": b"", "http_version": "1.1", "scheme": "http",
                  "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
                  "root_path": "",
                  "headers": [(b"content-type", b"application/json"),
                              (b"content-length", str(len(body)).encode()), *headers]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    start = time.process_time()
    for _ in range(n):
        await app(dict(scope_base), receive, send)
    return (time.process_time() - start) / n * 1e6, status


async def main(n: int, devnull: IO[str]) -> None:
    keys = MemoryKeyStore()
    key, token = new_key("acme", "user", "bench")
    viewer, viewer_token = new_key("acme", "viewer", "bench")
    await keys.add(key)
    await keys.add(viewer)
    auth_on = Auth(AuthConfig(enabled=True), keys)
    auth_off = Auth(AuthConfig(enabled=False), keys)
    assert await auth_on.authenticate(token) is not None

    def cached() -> float:
        check = auth_on.api_keys.cached
        start = time.process_time()
        for _ in range(n):
            check(token)
        return (time.process_time() - start) / n * 1e6

    async def nothing(scope: Any, receive: Any, send: Any) -> None:
        return None

    bearer = [(b"authorization", f"Bearer {token}".encode())]
    path = "/v1/sessions/ses_0123456789abcdef/turns"

    results: dict[str, float] = {"key check, cached": best_of(3, cached)}
    audited = Auth(AuthConfig(enabled=True), keys, audit_store=MemoryAuditStore(max_records=1000))
    await audited.authenticate(token)
    for name, auth, headers in (("edge, auth off", auth_off, []), ("edge, auth on", auth_on, bearer),
                                ("edge, auth on, audit queued", audited, bearer)):
        results[name] = min([(await asgi_cost(AuthEdge(nothing, auth), path, headers, n))[0]
                             for _ in range(3)])

    runtime = Runtime(Settings.model_validate({"store": {"url": "memory://"}}),
                      [Agent(name="echo", model=ScriptedModel(["hi"], repeat_last=True))])
    await runtime.start()
    # The 503s' own warnings are not what is measured.
    logging.getLogger("roost").setLevel(logging.ERROR)
    try:
        off_app = create_app(runtime, auth=auth_off)
        on_app = create_app(runtime, auth=auth_on)
        runtime.draining = True
        for name, app, headers, want in (
                ("503 draining, auth off (today)", off_app, [], 503),
                ("503 draining, auth on (key)", on_app, bearer, 503),
                ("401 no key", on_app, [], 401),
                ("403 viewer's turn", on_app,
                 [(b"authorization", f"Bearer {viewer_token}".encode())], 403)):
            costs = []
            for _ in range(3):
                cost, status = await asgi_cost(app, path, headers, n // 4)
                assert status == want, (name, status)
                costs.append(cost)
            results[name] = min(costs)
        from roost.observability.logs import configure_logging

        # The audited rows: records rendered as JSON lines, as in production.
        configure_logging(level="info", fmt="json", stream=devnull)
        logging.getLogger("roost.audit").setLevel(logging.INFO)
        results["401 no key, audited (JSON log)"] = min(
            [(await asgi_cost(on_app, path, [], n // 4))[0] for _ in range(3)])
        runtime.draining = False
    finally:
        await runtime.close()
    for name, micros in results.items():
        print(f"{name:>32}: {micros:7.2f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20_000)
    with open(os.devnull, "w") as devnull:
        asyncio.run(main(parser.parse_args().n, devnull))
