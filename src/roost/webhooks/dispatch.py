"""Delivering run outcomes to webhooks, from the durable outbox, on any instance.

    delivery = await runtime.webhooks.arm(tenant, run.id, url, ["run.completed"])

The rules, in the order they apply:

1. A run is given a webhook before its turn is acknowledged (`arm`): a row in the outbox,
   state `armed`, due to be looked at in `watch_interval_s`. Nothing else needs to happen at
   the run's end, so no crash can lose a delivery: a row outlives any instance.
2. When a run ends on the instance that armed it, `run_ended` makes the row due at once (one
   store write, off the run's task). Elsewhere (a background run claimed by another
   instance, a run finished by takeover) the next look finds it ended.
3. The delivery loop (`deliver_forever`, one per instance) claims due rows — a lease each,
   at most `per_tenant_concurrency` of one tenant per claim and in flight here, at most
   `concurrency` in all — and handles each in a task of its own task group: an `armed` row
   whose run has not ended is pushed back; one that ended fixes its payload (`pending`)
   and is attempted. A run never waits for any of this.
4. An attempt signs the body (`signing.py`), resolves and checks the target
   (`targets.py`), POSTs with a `timeout_s` deadline, and records the outcome. 2xx:
   `delivered`; 410 Gone: `failed` (the receiver says stop); otherwise retried after
   an exponential delay with jitter (`backoff_base_s` doubling, at most `backoff_max_s`)
   until `max_attempts` or `retry_for_s` after the first attempt, then `failed`.
5. A claimant that dies mid-attempt loses its lease (`lease_s`); the row is claimed again
   and attempted again with the same `webhook-id`: at least once, and receivers dedupe.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from roost.errors import InvalidInput, RoostError, RunNotFound
from roost.runtime.handle import new_id
from roost.sessions.records import TERMINAL_STATUSES, RunRecord
from roost.webhooks.config import WebhooksConfig
from roost.webhooks.records import END_EVENTS, EVENTS, Attempt, Delivery
from roost.webhooks.secrets import rotate, secret_of
from roost.webhooks.signing import sign
from roost.webhooks.store import WebhookStore, open_webhook_store
from roost.webhooks.targets import TargetRefused, check_url, resolve_checked

if TYPE_CHECKING:
    import httpx

    from roost.runtime.runtime import Runtime

log = logging.getLogger("roost.webhooks")


@dataclass(slots=True)
class WebhookStatistics:
    armed: int = 0
    attempts: int = 0
    delivered: int = 0
    failed: int = 0  # gave up
    retries: int = 0  # failed attempts to be retried
    in_flight: int = 0


class Webhooks:
    def __init__(self, runtime: Runtime, config: WebhooksConfig) -> None:
        self.runtime = runtime
        self.config = config
        settings = runtime.settings.store
        self.store: WebhookStore = open_webhook_store(settings.url, **settings.options)
        self.stats = WebhookStatistics()
        self._wake = asyncio.Event()
        self._watched: set[tuple[str, str]] = set()  # armed here, not ended yet
        self._ended: list[tuple[str, str]] = []
        self._per_tenant: Counter[str] = Counter()
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
        await self.store.close()

    # -- giving a run a webhook ------------------------------------------------------
    def check(self, url: str, events: list[str] | None) -> list[str]:
        """Validate a webhook (InvalidInput naming the field); the events it asks for."""
        check_url(url, self.config)
        chosen = list(events) if events else list(END_EVENTS)
        for event in chosen:
            if event not in EVENTS:
                raise InvalidInput(f"unknown event {event!r}; one of {', '.join(EVENTS)}",
                                   field="webhook.events")
        return chosen

    async def arm(self, tenant: str, run_id: str, url: str, events: list[str]) -> Delivery:
        """Give the run its webhook (idempotent: a repeated submission keeps the first)."""
        clock = time.time()
        delivery = Delivery(id=new_id("whd"), tenant=tenant, run_id=run_id, url=url,
                            events=events, created_at=clock,
                            next_at=clock + self.config.watch_interval_s)
        if await self.store.arm(delivery):
            self.stats.armed += 1
            # A receiver needs the secret to verify: make sure there is one from now on.
            await self.secret(tenant)
        # Watched until its end is seen (here: `run_ended`; elsewhere: `_look_at_run`).
        self._watched.add((tenant, run_id))
        if self.runtime.live_run(tenant, run_id) is None:
            # Ended already, queued, or runs elsewhere: look now, not in watch_interval_s.
            self._ended.append((tenant, run_id))
            self._wake.set()
        return delivery

    def run_ended(self, tenant: str, run_id: str) -> None:
        """Called at every run's end on this instance: costs a set lookup unless the run
        was armed here."""
        key = (tenant, run_id)
        if key in self._watched:
            self._watched.discard(key)
            self._ended.append(key)
            self._wake.set()

    async def deliveries(self, tenant: str, run_id: str) -> Delivery | None:
        return await self.store.get(tenant, run_id)

    # -- secrets -----------------------------------------------------------------------
    async def secret(self, tenant: str) -> str:
        """The tenant's signing secret, created on first use."""
        return await secret_of(self.store, tenant)

    async def rotate_secret(self, tenant: str) -> str:
        """A new secret for the tenant, used from the next attempt on (every instance reads
        it per attempt)."""
        return await rotate(self.store, tenant)

    # -- delivering --------------------------------------------------------------------
    async def deliver_forever(self) -> None:
        rt = self.runtime
        cfg = self.config
        async with asyncio.TaskGroup() as group:
            while True:
                self._wake.clear()
                await self._flush_ended()
                free = cfg.concurrency - self.stats.in_flight
                full = False
                if free > 0 and not rt.draining:
                    try:
                        # Tenants with their fill in flight here are left out of the claim:
                        # their older rows would otherwise take every place in it, claim
                        # after claim, and starve the other tenants.
                        busy = [t for t, n in self._per_tenant.items()
                                if n >= cfg.per_tenant_concurrency]
                        batch = await self.store.claim(rt.instance_id, cfg.lease_s, free,
                                                       cfg.per_tenant_concurrency, busy)
                    except Exception as exc:  # the store is down: try again next poll
                        log.warning("webhooks: claim failed: %s", exc)
                        batch = []
                    given_back = 0
                    for delivery in batch:
                        if self._per_tenant[delivery.tenant] >= cfg.per_tenant_concurrency:
                            # This tenant has enough in flight here: give the row back (and
                            # do not claim again before the next poll, or this would spin).
                            given_back += 1
                            group.create_task(self._give_back(delivery))
                            continue
                        self._per_tenant[delivery.tenant] += 1
                        self.stats.in_flight += 1
                        group.create_task(self._handle(delivery))
                    full = len(batch) == free and not given_back
                if full:
                    continue
                try:
                    async with asyncio.timeout(cfg.poll_interval_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _flush_ended(self) -> None:
        ended, self._ended = self._ended, []
        for tenant, run_id in ended:
            try:
                await self.store.wake(tenant, run_id, time.time())
            except RoostError as exc:  # the watch interval finds it instead
                log.warning("webhooks: wake of run %s failed: %s", run_id, exc)

    async def _give_back(self, delivery: Delivery) -> None:
        try:
            await self.store.save(delivery, self.runtime.instance_id)
        except RoostError as exc:  # its lease lapses instead
            log.warning("webhooks: give back of %s failed: %s", delivery.id, exc)

    async def _handle(self, delivery: Delivery) -> None:
        try:
            if delivery.state == "armed":
                await self._look_at_run(delivery)
            if delivery.state == "pending":
                await self._attempt(delivery)
            if not await self.store.save(delivery, self.runtime.instance_id):
                log.warning("webhooks: lost the lease of %s", delivery.id)
        except Exception:  # keep delivering the others; the lease lapses, it comes back
            log.exception("webhooks: delivery %s", delivery.id)
        finally:
            self.stats.in_flight -= 1
            self._per_tenant[delivery.tenant] -= 1
            if self._per_tenant[delivery.tenant] <= 0:
                del self._per_tenant[delivery.tenant]
            self._wake.set()

    async def _look_at_run(self, delivery: Delivery) -> None:
        try:
            run = await self.runtime.store.get_run(delivery.tenant, delivery.run_id)
        except RunNotFound:
            delivery.state = "skipped"
            return
        if run.status not in TERMINAL_STATUSES:
            delivery.next_at = time.time() + self.config.watch_interval_s
            return
        self._watched.discard((delivery.tenant, delivery.run_id))
        event = f"run.{run.status}"
        wanted = set(delivery.events)
        if event not in wanted and not wanted & {"*", "run.ended"}:
            delivery.state = "skipped"
            return
        delivery.event = event
        delivery.payload = self.payload(delivery, event, run)
        delivery.state = "pending"
        delivery.next_at = time.time()

    def payload(self, delivery: Delivery, event: str, run: RunRecord) -> str:
        """The body: a Standard Webhooks style envelope around the run."""
        data: dict[str, Any] = {
            "id": run.id, "session_id": run.session_id, "agent": run.agent,
            "status": run.status, "input": run.input, "output": run.output,
            "error": run.error, "usage": run.usage_data(), "attempt": run.attempt,
            "created_at": run.created_at, "updated_at": run.updated_at}
        body = {"type": event, "timestamp": datetime.now(UTC).isoformat(),
                "delivery_id": delivery.id, "data": data}
        text = msgspec.json.encode(body).decode()
        if len(text) > self.config.max_payload_bytes:
            data["output"] = None
            data["input"] = None
            data["truncated"] = True
            text = msgspec.json.encode(body).decode()
        return text

    async def _attempt(self, delivery: Delivery) -> None:
        cfg = self.config
        assert delivery.payload is not None
        body = delivery.payload.encode()
        clock = time.time()
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        self.stats.attempts += 1
        try:
            headers = sign(await self.secret(delivery.tenant), delivery.id, clock, body)
            status = await self._post(delivery.url, body, headers)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except TargetRefused as exc:
            error = f"refused: {exc}"
        except TimeoutError:
            error = f"timed out after {cfg.timeout_s:g} s"
        except Exception as exc:  # httpx errors, OSError: the receiver's problem, retried
            error = f"{type(exc).__name__}: {exc}"[:500]
        delivery.attempts.append(Attempt(at=clock, status_code=status, error=error,
                                         duration_ms=round((time.monotonic() - started) * 1e3,
                                                           3)))
        if error is None:
            delivery.state = "delivered"
            self.stats.delivered += 1
            return
        n = len(delivery.attempts)
        if status == 410 or n >= cfg.max_attempts \
                or clock - delivery.attempts[0].at >= cfg.retry_for_s:
            delivery.state = "failed"
            self.stats.failed += 1
            log.info("webhooks: gave up on %s after %d attempts: %s", delivery.id, n, error)
            return
        self.stats.retries += 1
        delivery.next_at = time.time() + backoff(n, cfg)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await resolve_checked(host, port, self.config)
        # Connect to the address checked, not to the name again (DNS rebinding); the name
        # stays in Host and, for TLS, in SNI and the certificate check.
        netloc = f"[{address}]" if ":" in address else address
        target = urlunsplit((parts.scheme, f"{netloc}:{port}", parts.path or "/", parts.query,
                             ""))
        headers = {**headers, "content-type": "application/json",
                   "user-agent": "roost-webhooks", "host": parts.netloc}
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        async with asyncio.timeout(self.config.timeout_s):
            async with self.client().stream("POST", target, content=body, headers=headers,
                                            extensions=extensions) as response:
                return response.status_code  # the body is not read: receivers owe none

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            try:
                import httpx
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise RuntimeError("webhook deliveries need httpx: "
                                   "pip install 'roost[webhooks]'") from exc
            self._client = httpx.AsyncClient(
                timeout=self.config.timeout_s, follow_redirects=False, trust_env=False,
                limits=httpx.Limits(max_connections=self.config.concurrency))
        return self._client

    def statistics(self) -> dict[str, int]:
        s = self.stats
        return {"armed": s.armed, "attempts": s.attempts, "delivered": s.delivered,
                "failed": s.failed, "retries": s.retries, "in_flight": s.in_flight}


def backoff(attempts: int, config: WebhooksConfig) -> float:
    """The delay after the `attempts`-th failure: exponential, capped, with equal jitter
    (half fixed, half random) so retries of many deliveries spread out yet never come back
    at once."""
    delay = min(config.backoff_max_s, config.backoff_base_s * 2.0 ** min(attempts - 1, 40))
    return delay / 2 + random.uniform(0, delay / 2)
