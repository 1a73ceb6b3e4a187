"""Idempotent submission: `Idempotency-Key` on turns and session creation.

A client that lost its answer (a reset connection, a timeout, an instance killed under it)
sends the same request again with the same key. Within `runtime.idempotency_ttl_s` (24 h by
default) the same key and body get the same result — the run (its outcome, or its stream),
or the session — through any instance; the same key with another body is a 422. Keys are
per tenant and per target (one session's turns, one agent's sessions), stored in the shared
store (`LeaseStore.claim_idempotency_key`, put-if-absent: one submission wins a race).

The key is claimed once the turn was admitted, just before its run starts, so a refused
submission (409, 429, 503) leaves no key behind and its retry goes ahead.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from roost.errors import InvalidInput

_encode = msgspec.json.Encoder(order="sorted").encode


class Replay(Exception):  # noqa: N818 - a control-flow signal, like approval-required
    """This submission repeats an earlier one: answer with `run_id`'s outcome or stream."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"replays run {run_id}")
        self.run_id = run_id


def fingerprint(request: dict[str, Any]) -> str:
    """A stable digest of what a request asks (key order does not matter)."""
    return hashlib.sha256(_encode(request)).hexdigest()


def check_same_request(stored: str, mine: str) -> None:
    if stored != mine:
        raise InvalidInput("this Idempotency-Key was used with another request body; "
                           "use a new key for a new request", field="Idempotency-Key",
                           reason="idempotency_key_reused")


def check_key(key: str) -> str:
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise InvalidInput("Idempotency-Key must be 1 to 255 printable characters",
                           field="Idempotency-Key")
    return key
