"""A queue served by strict priority, then weighted-fair between tenants, then FIFO.

Each priority class is its own virtual-time fair queue over per-tenant lanes. A lane carries a virtual *pass*: the tag its next item starts at. `pop` serves the lane
with the smallest pass and advances it by `1 / weight`, so over any backlogged stretch a tenant
gets `weight / sum(weights)` of the dispatches. The class's virtual time is the smallest pass
still waiting (as in WF2Q+; never moving backwards); a lane that goes idle and comes back starts
at `max(its pass, virtual time)`, so a tenant neither banks credit by being idle nor gains by
emptying its lane for a moment, and a stream of newcomers cannot starve a backlogged tenant
(with the start tag of the last item served as virtual time, plain SFQ, it can: each newcomer
enters at the very tag just served, ahead of everyone waiting).

Tenants can be *blocked* (the admission controller blocks one at its running quota): their
lanes are set aside ("parked") as `pop` meets them and rescheduled by `unblock` at the current
virtual time, without credit for the time spent blocked. Others are served meanwhile.

Costs: `push`, `remove` O(1) plus O(log lanes) when a lane becomes active; `pop` amortised
O(log lanes). Removal is immediate (lanes are insertion-ordered dicts), so a cancelled item
never lingers; an emptied lane leaves at most one stale heap entry, skipped lazily.

    queue: FairQueue[Job] = FairQueue(classes=2, weight=lambda tenant: weights.get(tenant, 1.0))
    queue.push(job, "acme", 0)     # class 0 is served before class 1
    job = queue.pop()              # None when empty or every queued tenant is blocked
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)

_IDLE, _SCHEDULED, _PARKED = 0, 1, 2

# Idle lanes are kept while their pass is ahead of virtual time (forgetting them would hand a
# tenant that was just served a fresh, earlier tag); they are swept when this many pile up.
_SWEEP_MIN = 1024


class _Lane(Generic[T]):
    __slots__ = ("tenant", "klass", "items", "pass_", "state")

    def __init__(self, tenant: str, klass: int, pass_: float) -> None:
        self.tenant = tenant
        self.klass = klass
        self.items: OrderedDict[T, None] = OrderedDict()
        self.pass_ = pass_
        self.state = _IDLE


class _Class(Generic[T]):
    __slots__ = ("lanes", "heap", "vtime", "count", "sweep_at")

    def __init__(self) -> None:
        self.lanes: dict[str, _Lane[T]] = {}
        # (pass, tie-break sequence, lane): the sequence keeps equal passes FIFO by arrival.
        self.heap: list[tuple[float, int, _Lane[T]]] = []
        self.vtime = 0.0
        self.count = 0
        self.sweep_at = _SWEEP_MIN


class FairQueue(Generic[T]):
    """Items queued by (tenant, priority class). Single-threaded: one event loop owns it.

    `weight(tenant)` is read each time a tenant is served, so weights can change at any
    time (hot reload) and take effect from the next dispatch. An item may be queued once.
    """

    __slots__ = ("_classes", "_weight", "_blocked", "_parked", "_seq", "_len")

    def __init__(self, classes: int = 2, *, weight: Callable[[str], float] | None = None) -> None:
        if classes < 1:
            raise ValueError("a fair queue needs at least one priority class")
        self._classes: list[_Class[T]] = [_Class() for _ in range(classes)]
        self._weight: Callable[[str], float] = weight or _unit_weight
        self._blocked: set[str] = set()
        self._parked: dict[str, list[_Lane[T]]] = {}
        self._seq = itertools.count()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def count(self, klass: int) -> int:
        """Items queued in one priority class."""
        return self._classes[klass].count

    def tenant_count(self, tenant: str) -> int:
        """Items queued for one tenant, all classes (O(classes))."""
        total = 0
        for c in self._classes:
            lane = c.lanes.get(tenant)
            if lane is not None:
                total += len(lane.items)
        return total

    def blocked(self, tenant: str) -> bool:
        return tenant in self._blocked

    def __contains__(self, item: object) -> bool:
        # Linear; for tests and debugging only. The owner knows where its items are.
        return any(item in lane.items for c in self._classes for lane in c.lanes.values())

    def push(self, item: T, tenant: str, klass: int) -> None:
        """Queue `item` at the back of the tenant's lane in class `klass` (0 = served first)."""
        c = self._classes[klass]
        lane = c.lanes.get(tenant)
        if lane is None:
            lane = c.lanes[tenant] = _Lane(tenant, klass, c.vtime)
            if len(c.lanes) > c.sweep_at:
                self._sweep(c)
        if item in lane.items:
            raise ValueError("item is already queued")
        lane.items[item] = None
        c.count += 1
        self._len += 1
        if lane.state == _IDLE:
            self._schedule(c, lane)

    def remove(self, item: T, tenant: str, klass: int) -> bool:
        """Take `item` out wherever it is in the queue; False if it is not queued."""
        c = self._classes[klass]
        lane = c.lanes.get(tenant)
        if lane is None or item not in lane.items:
            return False
        del lane.items[item]
        c.count -= 1
        self._len -= 1
        if not lane.items:
            if lane.state == _PARKED:
                self._unpark(lane)
            if lane.state == _IDLE:
                self._idle(c, lane)
            # A _SCHEDULED lane keeps its heap entry; `pop` discards it when it surfaces.
        if c.count == 0:
            self._reset(c)
        return True

    def pop(self) -> T | None:
        """The next item by priority, fair share and arrival; None if nothing is servable."""
        for c in self._classes:
            if c.count == 0:
                continue
            heap = c.heap
            while heap:
                pass_, _, lane = heap[0]
                if not lane.items:  # emptied by `remove` while scheduled
                    heapq.heappop(heap)
                    lane.state = _IDLE
                    self._idle(c, lane)
                    continue
                if lane.tenant in self._blocked:
                    heapq.heappop(heap)
                    self._park(lane)
                    continue
                item, _ = lane.items.popitem(last=False)
                c.count -= 1
                self._len -= 1
                lane.pass_ = pass_ + 1.0 / self._weight(lane.tenant)
                if lane.items:
                    heapq.heapreplace(heap, (lane.pass_, next(self._seq), lane))
                else:
                    heapq.heappop(heap)
                    lane.state = _IDLE
                # Virtual time follows the smallest pass still waiting (never backwards), so
                # an arrival starts level with the backlog, neither ahead of it nor behind.
                if heap and heap[0][0] > c.vtime:
                    c.vtime = heap[0][0]
                elif pass_ > c.vtime:
                    c.vtime = pass_
                if lane.state == _IDLE:
                    self._idle(c, lane)
                if c.count == 0:
                    self._reset(c)
                return item
        return None

    def block(self, tenant: str) -> None:
        """Stop serving `tenant` (its items stay queued, in order) until `unblock`."""
        self._blocked.add(tenant)

    def unblock(self, tenant: str) -> None:
        """Serve `tenant` again, from the current virtual time (no credit for the wait)."""
        self._blocked.discard(tenant)
        for lane in self._parked.pop(tenant, ()):
            lane.state = _IDLE
            self._schedule(self._classes[lane.klass], lane)

    def _schedule(self, c: _Class[T], lane: _Lane[T]) -> None:
        if lane.tenant in self._blocked:
            self._park(lane)
            return
        if lane.pass_ < c.vtime:
            lane.pass_ = c.vtime
        heapq.heappush(c.heap, (lane.pass_, next(self._seq), lane))
        lane.state = _SCHEDULED

    def _park(self, lane: _Lane[T]) -> None:
        lane.state = _PARKED
        self._parked.setdefault(lane.tenant, []).append(lane)

    def _unpark(self, lane: _Lane[T]) -> None:
        parked = self._parked[lane.tenant]
        parked.remove(lane)  # at most one lane per class: tiny list
        if not parked:
            del self._parked[lane.tenant]
        lane.state = _IDLE

    def _idle(self, c: _Class[T], lane: _Lane[T]) -> None:
        # Forget a lane only when it holds no claim: its pass is not ahead of virtual time.
        if lane.pass_ <= c.vtime and c.lanes.get(lane.tenant) is lane:
            del c.lanes[lane.tenant]

    def _reset(self, c: _Class[T]) -> None:
        # Nothing queued in this class: fairness history no longer matters (SFQ resets its
        # virtual time when idle), and every heap entry left is stale.
        c.heap.clear()
        c.lanes.clear()
        c.vtime = 0.0
        c.sweep_at = _SWEEP_MIN

    def _sweep(self, c: _Class[T]) -> None:
        stale = [
            t
            for t, lane in c.lanes.items()
            if lane.state == _IDLE and not lane.items and lane.pass_ <= c.vtime
        ]
        for tenant in stale:
            del c.lanes[tenant]
        c.sweep_at = max(_SWEEP_MIN, 2 * len(c.lanes))


def _unit_weight(tenant: str) -> float:
    return 1.0
