"""The outbox in this process (tests, `memory://`): synchronous code, so every method is
atomic on the loop."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

import msgspec

from roost.webhooks.records import Delivery


class MemoryWebhooks:
    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], Delivery] = {}
        self._leases: dict[tuple[str, str], tuple[str, float]] = {}
        self._secrets: dict[str, str] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def arm(self, delivery: Delivery) -> bool:
        key = (delivery.tenant, delivery.run_id)
        if key in self._rows:
            return False
        self._rows[key] = _copy(delivery)
        return True

    async def get(self, tenant: str, run_id: str) -> Delivery | None:
        row = self._rows.get((tenant, run_id))
        return None if row is None else _copy(row)

    async def wake(self, tenant: str, run_id: str, at: float) -> None:
        row = self._rows.get((tenant, run_id))
        if row is not None and row.state == "armed":
            row.next_at = min(row.next_at, at)

    async def claim(self, owner: str, lease_s: float, limit: int, per_tenant: int,
                    exclude: Sequence[str] = ()) -> list[Delivery]:
        clock = time.time()
        due = sorted((row for key, row in self._rows.items() if row.open
                      and row.tenant not in exclude
                      and row.next_at <= clock and self._leases.get(key, ("", 0.0))[1] < clock),
                     key=lambda row: row.next_at)
        taken: list[Delivery] = []
        per: Counter[str] = Counter()
        for row in due:
            if len(taken) == limit:
                break
            if per[row.tenant] < per_tenant:
                per[row.tenant] += 1
                self._leases[(row.tenant, row.run_id)] = (owner, clock + lease_s)
                taken.append(_copy(row))
        return taken

    async def save(self, delivery: Delivery, owner: str) -> bool:
        key = (delivery.tenant, delivery.run_id)
        lease = self._leases.get(key)
        if lease is None or lease[0] != owner:
            return False
        del self._leases[key]
        self._rows[key] = _copy(delivery)
        return True

    async def get_secret(self, tenant: str) -> str | None:
        return self._secrets.get(tenant)

    async def put_secret(self, tenant: str, secret: str, *, replace: bool = True) -> str:
        if replace or tenant not in self._secrets:
            self._secrets[tenant] = secret
        return self._secrets[tenant]


def _copy(row: Delivery) -> Delivery:
    return msgspec.convert(msgspec.to_builtins(row), Delivery)
