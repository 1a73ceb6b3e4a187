"""An exactly-once side effect on `ToolContext.idempotency_key` and a dedupe table.

The engine runs a tool call at least once and records its result exactly once: when an
instance dies after the tool acted but before its result reached the log, the instance that
takes the run over runs the same call again, with the same `idempotency_key`
(`run_id:call_id`). Here the effect (a ledger row) and the key (a `tool_effects` row) are
written in one transaction of one database, so the second execution finds the key and
returns the first one's answer: the refund happens once.

When the effect is in another system (a payment API), pass the key to it instead (most take
an `Idempotency-Key` header) — a dedupe table next to a call it cannot roll back only narrows
the window, it does not close it.

    roost serve examples/exactly_once/refunds.py   # REFUNDS_DB=/path/refunds.db
"""

from __future__ import annotations

import os
import sqlite3
import time

from roost import Agent, tool
from roost.tools import ToolContext

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tool_effects (key TEXT PRIMARY KEY, result TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, orders TEXT NOT NULL,
                                   amount REAL NOT NULL, key TEXT NOT NULL);
"""


def _connect() -> sqlite3.Connection:
    db = sqlite3.connect(os.environ.get("REFUNDS_DB", "refunds.db"), timeout=30,
                         isolation_level=None)
    db.executescript(_SCHEMA)
    return db


@tool
def refund(orders: str, amount: float, ctx: ToolContext) -> str:
    """Refund an order, once.

    Args:
        orders: The order id.
        amount: How much to refund.
    """
    db = _connect()
    try:
        db.execute("BEGIN IMMEDIATE")  # one writer at a time: the check and the write are one
        row = db.execute("SELECT result FROM tool_effects WHERE key = ?",
                         (ctx.idempotency_key,)).fetchone()
        if row is not None:
            db.execute("ROLLBACK")
            return str(row[0])
        db.execute("INSERT INTO ledger (orders, amount, key) VALUES (?, ?, ?)",
                   (orders, amount, ctx.idempotency_key))
        result = f"refunded {amount:g} on order {orders}"
        db.execute("INSERT INTO tool_effects (key, result) VALUES (?, ?)",
                   (ctx.idempotency_key, result))
        db.execute("COMMIT")
    finally:
        db.close()
    # Lets a test kill the instance after the effect and before the result is recorded.
    time.sleep(float(os.environ.get("REFUND_PAUSE_S", "0")))
    return result


payments = Agent(name="payments", model="demo", tools=[refund],
                 description="Refunds orders exactly once.")
