from __future__ import annotations

from roost.models.base import Message
from roost.runtime.cache import SessionCache
from roost.sessions import Session


def session(i: int) -> Session:
    return Session(id=f"s{i}", agent="a")


def test_lru_eviction_by_count() -> None:
    cache = SessionCache(max_sessions=2, max_bytes=10**9)
    cache.put(session(1), [])
    cache.put(session(2), [])
    assert cache.get("default", "s1") is not None  # s1 is now most recent
    cache.put(session(3), [])
    assert cache.get("default", "s2") is None
    assert cache.get("default", "s1") is not None and cache.get("default", "s3") is not None
    assert cache.statistics().evictions == 1


def test_eviction_by_bytes_and_resize() -> None:
    cache = SessionCache(max_sessions=100, max_bytes=20_000)
    big = [Message(role="user", content="x" * 5_000)]
    for i in range(5):
        cache.put(session(i), list(big))
    stats = cache.statistics()
    assert stats.bytes <= 20_000 and stats.sessions < 5
    entry = cache.get("default", "s4")
    assert entry is not None
    entry.history.extend(big * 3)
    cache.resize(entry)
    assert cache.statistics().bytes <= 20_000


def test_tenants_do_not_collide() -> None:
    cache = SessionCache()
    cache.put(Session(id="same", agent="a", tenant="t1"), [])
    assert cache.get("t2", "same") is None
    assert cache.get("t1", "same") is not None
