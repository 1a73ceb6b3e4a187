"""The hot-session cache: sessions and their recent conversation, bounded by count and bytes.

Least-recently-used entries are evicted first. It is a cache, not a source of truth: every
write goes to the store first (write-through), and an evicted session is reloaded from the
store's log on its next turn.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from roost.models.base import Message
from roost.sessions.records import Session

_OVERHEAD = 400  # bytes per entry beyond its text: objects, dict slots (measured roughly)


def _message_bytes(messages: list[Message]) -> int:
    total = 0
    for m in messages:
        total += 120 + len(m.content or "")
        if m.tool_calls:
            total += sum(80 + len(c.arguments) for c in m.tool_calls)
    return total


class Entry(Protocol):
    """What the cache holds: a session, its conversation window, and the bytes counted."""

    session: Session
    history: list[Message]  # the conversation window, without the system prompt
    size: int


@dataclass(slots=True)
class CachedSession:
    session: Session
    history: list[Message]
    size: int = 0


E = TypeVar("E", bound=Entry)


def entry_bytes(entry: Entry) -> int:
    return _OVERHEAD + _message_bytes(entry.history) + len(entry.session.state) * 64


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    sessions: int
    bytes: int
    max_sessions: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int


class SessionCache:
    def __init__(self, *, max_sessions: int = 10_000, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0

    def get(self, tenant: str, session_id: str) -> Any:
        entry = self._entries.get((tenant, session_id))
        if entry is None:
            self._misses += 1
            return None
        self._hits += 1
        self._entries.move_to_end((tenant, session_id))
        return entry

    def put(self, session: Session, history: list[Message]) -> CachedSession:
        return self.add(CachedSession(session=session, history=history))

    def add(self, entry: E) -> E:
        """Cache `entry` (replacing any entry of its session) and evict what no longer fits."""
        key = (entry.session.tenant, entry.session.id)
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        entry.size = entry_bytes(entry)
        self._entries[key] = entry
        self._bytes += entry.size
        self._evict()
        return entry

    def resize(self, entry: Entry) -> None:
        """Recount an entry's bytes after its history changed."""
        key = (entry.session.tenant, entry.session.id)
        if self._entries.get(key) is not entry:
            return
        self._bytes -= entry.size
        entry.size = entry_bytes(entry)
        self._bytes += entry.size
        self._evict()

    def discard(self, tenant: str, session_id: str) -> None:
        entry = self._entries.pop((tenant, session_id), None)
        if entry is not None:
            self._bytes -= entry.size

    def _evict(self) -> None:
        while self._entries and (len(self._entries) > self.max_sessions or self._bytes > self.max_bytes):
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.size
            self._evictions += 1

    def __len__(self) -> int:
        return len(self._entries)

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(sessions=len(self._entries), bytes=self._bytes,
                               max_sessions=self.max_sessions, max_bytes=self.max_bytes,
                               hits=self._hits, misses=self._misses, evictions=self._evictions)
