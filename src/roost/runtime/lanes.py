"""One active run per session, in-process: a lane per busy session.

A turn arriving while its session has an active run follows the agent's double-texting
policy, decided synchronously (before any store or model work):

- `reject`: `SessionBusy` (409).
- `enqueue`: waits its turn in strict arrival order, at most `max_pending` waiting.
- `interrupt`: the active run (and anything waiting) is cancelled at its next await — its
  completed steps are already in the log — and the new turn runs next.

Across processes the store's lease does the same job (see `Runtime`); lanes keep a single
process from even asking the store when it already knows the answer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from roost.errors import SessionBusy

Key = tuple[str, str]  # (tenant, session_id)


@dataclass(slots=True)
class _Lane:
    active: Any = None
    waiting: deque[tuple[Any, asyncio.Future[None]]] = field(default_factory=deque)


class SessionLanes:
    def __init__(self) -> None:
        self._lanes: dict[Key, _Lane] = {}

    def enter(self, key: Key, turn: Any, *, policy: str, max_pending: int,
              cancel: Callable[[Any], None]) -> asyncio.Future[None] | None:
        """Register `turn`. Returns None when it is active at once, else a future that
        resolves when it becomes active. `cancel(turn)` interrupts a run (policy interrupt)."""
        lane = self._lanes.get(key)
        if lane is None:
            self._lanes[key] = _Lane(active=turn)
            return None
        if policy == "reject":
            raise SessionBusy("the session has an active run", session_id=key[1])
        if policy == "interrupt":
            while lane.waiting:
                waiting_turn, superseded = lane.waiting.popleft()
                cancel(waiting_turn)
                if not superseded.done():
                    superseded.cancel()
            if lane.active is not None:
                cancel(lane.active)
        elif len(lane.waiting) >= max_pending:
            raise SessionBusy(f"the session already has {max_pending} turns waiting",
                              session_id=key[1])
        turn_ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane.waiting.append((turn, turn_ready))
        return turn_ready

    def leave(self, key: Key, turn: Any) -> None:
        """`turn` is done (finished, failed, or gave up waiting): hand the lane on."""
        lane = self._lanes.get(key)
        if lane is None:
            return
        if lane.active is turn:
            lane.active = None
            while lane.waiting:
                next_turn, future = lane.waiting.popleft()
                if future.done():  # its waiter went away
                    continue
                lane.active = next_turn
                future.set_result(None)
                return
            del self._lanes[key]
            return
        # A waiting turn that gave up (cancelled, deadline): drop it from the queue.
        for index, (waiting_turn, future) in enumerate(lane.waiting):
            if waiting_turn is turn:
                del lane.waiting[index]
                if not future.done():
                    future.cancel()
                break

    def active(self, key: Key) -> Any:
        lane = self._lanes.get(key)
        return lane.active if lane else None

    def waiting(self, key: Key) -> int:
        lane = self._lanes.get(key)
        return len(lane.waiting) if lane else 0

    def __len__(self) -> int:
        return len(self._lanes)
