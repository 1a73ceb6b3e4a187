from __future__ import annotations

import itertools
from collections import Counter, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.runtime.fair_queue import FairQueue

Item = tuple[str, int, int]  # (tenant, class, sequence)


def drain(queue: FairQueue[Item]) -> list[Item]:
    out: list[Item] = []
    while (item := queue.pop()) is not None:
        out.append(item)
    return out


def test_fifo_within_a_tenant_and_class() -> None:
    queue: FairQueue[Item] = FairQueue()
    for i in range(5):
        queue.push(("a", 0, i), "a", 0)
    assert [i for _, _, i in drain(queue)] == [0, 1, 2, 3, 4]
    assert len(queue) == 0
    assert queue.pop() is None


def test_strict_priority_between_classes() -> None:
    queue: FairQueue[Item] = FairQueue(classes=2)
    queue.push(("a", 1, 0), "a", 1)
    queue.push(("b", 1, 1), "b", 1)
    queue.push(("c", 0, 2), "c", 0)
    queue.push(("a", 0, 3), "a", 0)
    assert queue.count(0) == 2 and queue.count(1) == 2
    order = drain(queue)
    assert [klass for _, klass, _ in order] == [0, 0, 1, 1]
    # Within class 0, the two tenants share; within class 1 too.
    assert {t for t, k, _ in order if k == 0} == {"a", "c"}


def test_equal_weights_alternate() -> None:
    queue: FairQueue[Item] = FairQueue()
    for i in range(4):
        queue.push(("a", 0, i), "a", 0)
    for i in range(4):
        queue.push(("b", 0, i), "b", 0)
    tenants = [t for t, _, _ in drain(queue)]
    assert tenants == ["a", "b"] * 4


def backlogged_shares(weights: dict[str, float], dispatches: int) -> Counter[str]:
    """Keep every tenant backlogged; count who gets served."""
    queue: FairQueue[Item] = FairQueue(weight=weights.__getitem__)
    seq = itertools.count()
    for tenant in weights:
        for _ in range(20):
            queue.push((tenant, 0, next(seq)), tenant, 0)
    served: Counter[str] = Counter()
    for _ in range(dispatches):
        item = queue.pop()
        assert item is not None
        served[item[0]] += 1
        queue.push((item[0], 0, next(seq)), item[0], 0)  # refill: stay backlogged
    return served


@pytest.mark.parametrize(
    "weights", [{"a": 1.0, "b": 1.0}, {"a": 3.0, "b": 1.0}, {"a": 0.5, "b": 2.0, "c": 1.5}]
)
def test_backlogged_tenants_share_by_weight(weights: dict[str, float]) -> None:
    n = 20_000
    served = backlogged_shares(weights, n)
    total = sum(weights.values())
    for tenant, weight in weights.items():
        assert served[tenant] / n == pytest.approx(weight / total, abs=0.01)


def test_a_tenant_that_keeps_emptying_its_lane_gets_no_more_than_its_share() -> None:
    # "b" (weight 1) submits one item whenever it has none queued; "a" (weight 3) is always
    # backlogged. Forgetting b's pass when its lane empties would give it 1/2, not 1/4.
    queue: FairQueue[Item] = FairQueue(weight={"a": 3.0, "b": 1.0}.__getitem__)
    seq = itertools.count()
    for _ in range(10):
        queue.push(("a", 0, next(seq)), "a", 0)
    queue.push(("b", 0, next(seq)), "b", 0)
    served: Counter[str] = Counter()
    n = 8_000
    for _ in range(n):
        item = queue.pop()
        assert item is not None
        served[item[0]] += 1
        queue.push((item[0], 0, next(seq)), item[0], 0)
    assert served["b"] / n == pytest.approx(0.25, abs=0.01)


def test_an_idle_tenant_banks_no_credit() -> None:
    queue: FairQueue[Item] = FairQueue()
    for i in range(100):
        queue.push(("a", 0, i), "a", 0)
    for _ in range(50):
        queue.pop()
    # "b" arrives late with a burst: it alternates with "a", it does not get 50 in a row.
    for i in range(10):
        queue.push(("b", 0, i), "b", 0)
    first = [queue.pop() for _ in range(6)]
    assert Counter(item[0] for item in first if item) == {"a": 3, "b": 3}


def test_blocked_tenants_are_skipped_and_resume_without_credit() -> None:
    queue: FairQueue[Item] = FairQueue()
    for i in range(10):
        queue.push(("a", 0, i), "a", 0)
        queue.push(("b", 0, i), "b", 0)
    queue.block("a")
    assert queue.blocked("a")
    assert [queue.pop() for _ in range(4)] == [("b", 0, i) for i in range(4)]
    queue.unblock("a")
    # "a" comes back in order, sharing with "b" rather than catching up on what it missed.
    nxt = [queue.pop() for _ in range(4)]
    assert nxt == [("b", 0, 4), ("a", 0, 0), ("b", 0, 5), ("a", 0, 1)]


def test_only_blocked_work_queued_pops_nothing() -> None:
    queue: FairQueue[Item] = FairQueue()
    queue.block("a")
    queue.push(("a", 1, 0), "a", 1)
    queue.push(("a", 0, 1), "a", 0)
    assert queue.pop() is None
    assert len(queue) == 2
    assert queue.tenant_count("a") == 2
    queue.unblock("a")
    assert drain(queue) == [("a", 0, 1), ("a", 1, 0)]


def test_remove_anywhere() -> None:
    queue: FairQueue[Item] = FairQueue()
    items = [("a", 0, i) for i in range(5)]
    for item in items:
        queue.push(item, "a", 0)
    assert queue.remove(items[0], "a", 0)
    assert queue.remove(items[3], "a", 0)
    assert not queue.remove(items[3], "a", 0)
    assert not queue.remove(("zz", 0, 0), "zz", 0)
    assert len(queue) == 3
    assert items[1] in queue and items[3] not in queue
    assert drain(queue) == [items[1], items[2], items[4]]


def test_removing_a_parked_lane_empty_and_refilling_it() -> None:
    queue: FairQueue[Item] = FairQueue()
    queue.push(("a", 0, 0), "a", 0)
    queue.push(("b", 0, 0), "b", 0)
    queue.block("a")
    assert queue.pop() == ("b", 0, 0)
    assert queue.pop() is None  # parks "a"
    assert queue.remove(("a", 0, 0), "a", 0)
    assert len(queue) == 0
    queue.unblock("a")
    queue.push(("a", 0, 1), "a", 0)
    assert drain(queue) == [("a", 0, 1)]


def test_pushing_the_same_item_twice_is_refused() -> None:
    queue: FairQueue[Item] = FairQueue()
    queue.push(("a", 0, 0), "a", 0)
    with pytest.raises(ValueError):
        queue.push(("a", 0, 0), "a", 0)


def test_many_transient_tenants_leave_no_state_behind() -> None:
    queue: FairQueue[Item] = FairQueue()
    queue.push(("steady", 0, -1), "steady", 0)
    served: Counter[str] = Counter()
    for i in range(5_000):
        queue.push((f"t{i}", 0, i), f"t{i}", 0)
        queue.push(("steady", 0, i), "steady", 0)
        for _ in range(2):
            item = queue.pop()
            assert item is not None
            served["steady" if item[0] == "steady" else "new"] += 1
    # A stream of newcomers shares with the backlogged tenant; it does not starve it.
    assert served["steady"] == pytest.approx(5_000, abs=2)
    # Lanes of tenants that were served and left are swept, not kept forever.
    assert len(queue._classes[0].lanes) < 1100
    drain(queue)
    assert queue._classes[0].lanes == {} and queue._classes[0].heap == []


ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 3), st.integers(0, 1)),
        st.tuples(st.just("pop"), st.just(0), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 50), st.just(0)),
        st.tuples(st.just("block"), st.integers(0, 3), st.just(0)),
        st.tuples(st.just("unblock"), st.integers(0, 3), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_model_every_item_once_in_order_by_priority(
    script: list[tuple[str, int, int]],
) -> None:
    queue: FairQueue[Item] = FairQueue(weight=lambda t: 1.0 + int(t[1:]))
    model: dict[tuple[str, int], deque[Item]] = {}
    blocked: set[str] = set()
    seq = itertools.count()
    pushed: list[Item] = []
    for op, a, b in script:
        if op == "push":
            item = (f"t{a}", b, next(seq))
            queue.push(item, item[0], b)
            model.setdefault((item[0], b), deque()).append(item)
            pushed.append(item)
        elif op == "pop":
            got = queue.pop()
            servable = {k: v for k, v in model.items() if v and k[0] not in blocked}
            if not servable:
                assert got is None
                continue
            assert got is not None
            tenant, klass, _ = got
            assert tenant not in blocked
            # Strict priority, and FIFO within the lane.
            assert klass == min(k for _, k in servable)
            assert model[(tenant, klass)].popleft() == got
        elif op == "remove" and pushed:
            item = pushed[a % len(pushed)]
            lane = model.get((item[0], item[1]), deque())
            present = item in lane
            assert queue.remove(item, item[0], item[1]) is present
            if present:
                lane.remove(item)
        elif op == "block":
            queue.block(f"t{a}")
            blocked.add(f"t{a}")
        elif op == "unblock":
            queue.unblock(f"t{a}")
            blocked.discard(f"t{a}")
        assert len(queue) == sum(len(v) for v in model.values())
        for klass in (0, 1):
            assert queue.count(klass) == sum(len(v) for k, v in model.items() if k[1] == klass)
    for tenant in list(blocked):
        queue.unblock(tenant)
    rest = drain(queue)
    assert sorted(rest) == sorted(item for lane in model.values() for item in lane)
    assert len(queue) == 0
