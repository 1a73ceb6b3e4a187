"""The key spend ledger in PostgreSQL: table `key_spend` of migration 0006."""

from __future__ import annotations

from collections.abc import Mapping

from roost.auth.pg_table import PostgresTable


class PostgresKeySpend(PostgresTable):
    TABLE = "key_spend"

    async def add(self, spend: Mapping[tuple[str, str], tuple[int, float]]) -> None:
        if not spend:
            return
        pool = await self._pool_()
        keys = list(spend)
        # One statement per flush: additions, so concurrent instances never lose each other's.
        await pool.execute(
            f"INSERT INTO {self._table} AS s (key_id, period, tokens, cost) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::float8[]) "
            "ON CONFLICT (key_id, period) DO UPDATE SET tokens = s.tokens + excluded.tokens, "
            "cost = s.cost + excluded.cost",
            [k for k, _ in keys], [p for _, p in keys], [spend[k][0] for k in keys],
            [spend[k][1] for k in keys])

    async def get(self, key_id: str, periods: tuple[str, ...]) -> dict[str, tuple[int, float]]:
        pool = await self._pool_()
        rows = await pool.fetch(f"SELECT period, tokens, cost FROM {self._table} "
                                "WHERE key_id = $1 AND period = ANY($2::text[])",
                                key_id, list(periods))
        return {r["period"]: (int(r["tokens"]), float(r["cost"])) for r in rows}
