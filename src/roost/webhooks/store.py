"""The webhook outbox and the tenants' signing secrets, beside the session store.

A delivery row exists from the moment a run is given a webhook (before the turn is
acknowledged), in state `armed`: this is what makes delivery survive a crash between the
run's end and its enqueueing — there is no enqueueing step to lose. The dispatcher of any
instance claims due rows (`claim`: a lease per row on the store's rows, one claimant wins),
looks at the run, and once it has ended fixes the payload and attempts delivery; a row whose
claimant died is claimed again when its lease lapses.

- PostgreSQL: one `UPDATE … FROM (due rows, ranked per tenant)` that re-checks the lease
  under the row lock: two claimers never get the same row;
- SQLite: one `BEGIN IMMEDIATE` transaction; memory: synchronous code.

Claims take at most `per_tenant` rows of one tenant, oldest due first, so one tenant's
backlog (a dead receiver retried for a day) never fills another tenant's claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from roost.errors import ConfigError
from roost.webhooks.records import Delivery


class WebhookStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def arm(self, delivery: Delivery) -> bool:
        """Store the delivery unless the run already has one; True when stored."""

    async def get(self, tenant: str, run_id: str) -> Delivery | None: ...

    async def wake(self, tenant: str, run_id: str, at: float) -> None:
        """Make an armed delivery due by `at` (its run ended)."""

    async def claim(self, owner: str, lease_s: float, limit: int, per_tenant: int,
                    exclude: Sequence[str] = ()) -> list[Delivery]:
        """Up to `limit` open, due, unleased deliveries, leased to `owner` (see above), none
        of the tenants in `exclude` (those the caller has enough of in flight)."""

    async def save(self, delivery: Delivery, owner: str) -> bool:
        """Write back a claimed delivery and drop the lease; False (nothing written) when
        the lease was lost to another instance."""

    async def get_secret(self, tenant: str) -> str | None: ...

    async def put_secret(self, tenant: str, secret: str, *, replace: bool = True) -> str:
        """Store the tenant's secret (`replace` False: only if it has none); returns the
        secret stored now — two instances creating a first secret at once agree on one."""


def open_webhook_store(url: str, **options: object) -> WebhookStore:
    scheme, _, rest = url.partition("://")
    if scheme == "memory":
        from roost.webhooks.stores.memory import MemoryWebhooks

        return MemoryWebhooks()
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if path == ":memory:":
            from roost.webhooks.stores.memory import MemoryWebhooks

            return MemoryWebhooks()
        from roost.webhooks.stores.sqlite import SQLiteWebhooks

        return SQLiteWebhooks(path or ".roost/roost.db")
    if scheme in ("postgres", "postgresql"):
        try:
            from roost.webhooks.stores.postgres import PostgresWebhooks
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError("webhooks on PostgreSQL need asyncpg: pip install "
                              "'roost[postgres]'", [("store.url", str(exc))]) from exc
        schema = options.get("schema")
        return PostgresWebhooks(url, schema=schema if isinstance(schema, str) else None)
    if scheme in ("redis", "rediss"):
        try:
            from roost.webhooks.stores.redis import RedisWebhooks
        except ImportError as exc:  # pragma: no cover
            raise ConfigError("webhooks on Redis need redis-py: pip install 'roost[redis]'",
                              [("store.url", str(exc))]) from exc
        prefix = options.get("prefix")
        return RedisWebhooks(url, prefix=prefix if isinstance(prefix, str) else "roost:")
    raise ConfigError(f"no webhook outbox for {scheme!r}", [("store.url", url)])
