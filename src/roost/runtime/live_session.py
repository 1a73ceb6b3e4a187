"""The one owner of a hot session in this process: `LiveSession`, and the registry that
hands it out, `LiveSessions`.

Invariants:

1. One `LiveSession` object per (tenant, session id) per process while anything uses it:
   a cold session is loaded once however many turns ask for it at the same moment (one
   load in flight per key), and a session pinned by a run is found again even after the
   LRU cache evicted it.
2. Only `LiveSession` writes a session's version, last seq, state and conversation window.
   Every append goes through `append`: compare-and-set on the version, retried when only
   the state moved (a PATCH), `SessionMoved` when another writer appended events.
3. An append whose outcome is unknown (the store failed after the request was sent: a reset,
   a timeout, a lost acknowledgement) is settled by reading the log back, never guessed: if
   the events are there they count as written, so a completed step is never reported failed.

The engine sees a `LiveSession` through its small port (`roost.engine.run.SessionPort`):
`append`, `state`, `reload`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from roost.agent import Policies
from roost.engine.budget import fit_to_budget
from roost.engine.compaction import (
    Compaction,
    apply_compaction,
    compaction_event,
    context_from_events,
)
from roost.engine.context import close_dangling_calls
from roost.errors import SessionMoved, StoreError, StoreUnavailable, VersionConflict
from roost.models.base import Message
from roost.runtime.cache import SessionCache
from roost.sessions.records import TERMINAL_STATUSES, Event, RunRecord, Session, now
from roost.sessions.store import Store as SessionLog

log = logging.getLogger("roost.runtime")

Key = tuple[str, str]  # (tenant, session_id)

#: conflicts caused only by state patches, retried before an append gives up
MAX_STATE_RETRIES = 5


class LiveSession:
    """A session's record and conversation window, and the only writer of both."""

    __slots__ = ("history", "pins", "policies", "session", "size", "store")

    def __init__(self, store: SessionLog, session: Session, history: list[Message],
                 policies: Policies) -> None:
        self.store = store
        self.session = session
        self.history = history  # the conversation window, without the system prompt
        self.policies = policies
        self.size = 0  # bytes, counted by the cache
        self.pins = 0  # runs holding this object

    @property
    def id(self) -> str:
        return self.session.id

    @property
    def tenant(self) -> str:
        return self.session.tenant

    @property
    def state(self) -> dict[str, Any]:
        return self.session.state

    def context(self, system: Message | None) -> list[Message]:
        """The messages a new run starts from: instructions, then the window."""
        return [system, *self.history] if system else list(self.history)

    # -- writes ---------------------------------------------------------------------
    async def append(self, events: list[Event], *, run: RunRecord | None = None) -> None:
        """Append `events` (and upsert `run` in the same transaction), assigning their seqs.

        Raises `SessionMoved` when another writer appended first (nothing written),
        `StoreUnavailable` when the store failed and reading back could not show the
        events landed."""
        session = self.session
        if run is not None:
            run.updated_at = now()
        for _ in range(MAX_STATE_RETRIES):
            try:
                session.version = await self.store.append(
                    session.tenant, session.id, events, session.version, run=run)
                break
            except VersionConflict:
                fresh = await self.store.get_session(session.tenant, session.id)
                if fresh.last_seq != session.last_seq:
                    if await self._landed(events, fresh):
                        return
                    raise SessionMoved(f"session {session.id} was appended to by another "
                                       "writer; refusing to interleave turns") from None
                session.version = fresh.version
                session.state = fresh.state
            except StoreUnavailable:
                if await self._settle(events):
                    return
                raise
        else:
            raise StoreError(f"session {session.id}: too many concurrent state patches")
        session.last_seq = events[-1].seq
        session.updated_at = now()

    async def _settle(self, events: list[Event]) -> bool:
        """After a failed append: read the log back once; True when the events landed."""
        try:
            fresh = await self.store.get_session(self.session.tenant, self.session.id)
        except StoreError:
            return False
        if fresh.last_seq == self.session.last_seq:
            self.session.version = fresh.version  # nothing landed; a retry may go ahead
            self.session.state = fresh.state
            return False
        return await self._landed(events, fresh)

    async def _landed(self, events: list[Event], fresh: Session) -> bool:
        """Whether the log right after our last seq holds exactly `events` (an earlier
        attempt of this append that committed although its acknowledgement was lost)."""
        session = self.session
        stored = await self.store.read_events(session.tenant, session.id,
                                              after=session.last_seq, limit=len(events))
        if len(stored) != len(events) or not all(map(_same_event, stored, events)):
            return False
        for mine, theirs in zip(events, stored, strict=True):
            mine.seq = theirs.seq
        log.info("session %s: an append whose acknowledgement was lost had landed", session.id)
        session.version = fresh.version
        session.state = fresh.state
        session.last_seq = events[-1].seq
        session.updated_at = now()
        return True

    async def patch_state(self, delta: dict[str, Any], expected_version: int | None) -> Session:
        fresh = await self.store.patch_state(self.session.tenant, self.session.id, delta,
                                             expected_version)
        # In place: a run holds this object and appends with its version.
        self.session.version = fresh.version
        self.session.state = fresh.state
        self.session.updated_at = fresh.updated_at
        return fresh

    async def reload(self) -> None:
        """Catch up with a session another writer moved on: record and window from the store."""
        fresh = await self.store.get_session(self.session.tenant, self.session.id)
        self.session.version = fresh.version
        self.session.last_seq = fresh.last_seq
        self.session.state = fresh.state
        self.history = await load_history(self.store, fresh, self.policies)

    async def record_run(self, run: RunRecord, *, owner: str | None = None) -> None:
        """Write the run record alone (its log could not take the terminal event) — unless
        the stored record already ended or another instance owns it now: a run that lost
        its session to another writer must not overwrite what that writer recorded."""
        stored = await self.store.get_run(run.tenant, run.id)
        if stored.status in TERMINAL_STATUSES or stored.owner not in (None, owner):
            log.warning("run %s: not recording %s over the stored %s record (owner %s)",
                        run.id, run.status, stored.status, stored.owner)
            return
        run.updated_at = now()
        await self.store.put_run(run)

    def remember(self, conversation: list[Message], *, completed: bool) -> None:
        """Keep the window after a run: its whole conversation (repaired unless it
        completed), fitted to the agent's budget."""
        if not completed:
            conversation = close_dangling_calls(conversation)
        self.history = fit_to_budget(conversation, self.policies.history_token_budget,
                                     max_messages=self.policies.history_messages)

    async def record_compaction(self, compaction: Compaction, run_id: str,
                                conversation: list[Message]) -> bool:
        """Append a compaction event and shrink the window; False when the log moved on
        (someone else's turn: this summary is stale and is dropped)."""
        try:
            await self.append([compaction_event(compaction, run_id)])
        except SessionMoved:
            return False
        self.remember(apply_compaction(conversation, compaction), completed=True)
        return True


def _same_event(stored: Event, mine: Event) -> bool:
    # ts is the writer's clock at creation: with run id and type it names one event.
    return (stored.run_id == mine.run_id and stored.type == mine.type
            and abs(stored.ts - mine.ts) < 0.002)


async def load_history(store: SessionLog, session: Session, policies: Policies) -> list[Message]:
    """A cold session's conversation window from the newest part of its log."""
    if not session.last_seq:
        return []
    # Each message is one event among a few bookkeeping ones: read a margin more.
    limit = policies.history_messages
    events = await store.tail_events(session.tenant, session.id, max(limit * 3, 200))
    return fit_to_budget(close_dangling_calls(context_from_events(events)),
                         policies.history_token_budget, max_messages=limit)


class LiveSessions:
    """Hands out the one `LiveSession` per session: the LRU cache, the pinned ones, and one
    load in flight per key."""

    def __init__(self, store: SessionLog, cache: SessionCache) -> None:
        self.store = store
        self.cache = cache
        self._pinned: dict[Key, LiveSession] = {}
        self._loading: dict[Key, asyncio.Future[LiveSession]] = {}

    def peek(self, tenant: str, session_id: str) -> LiveSession | None:
        key = (tenant, session_id)
        live = self._pinned.get(key)
        return live if live is not None else self.cache.get(tenant, session_id)

    async def get(self, tenant: str, session_id: str, policies_of: Any) -> LiveSession:
        """The session's live owner, loading it once when cold. `policies_of(agent_name)`
        gives the agent's policies (the window's size) for a loaded record."""
        live = self.peek(tenant, session_id)
        if live is not None:
            return live
        key = (tenant, session_id)
        loading = self._loading.get(key)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[LiveSession] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            session = await self.store.get_session(tenant, session_id)
            policies = policies_of(session.agent)
            live = LiveSession(self.store, session, await load_history(self.store, session, policies),
                               policies)
            self.cache.add(live)
            future.set_result(live)
            return live
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._loading[key]

    def add(self, session: Session, policies: Policies) -> LiveSession:
        """A session just created here: live at once, with an empty window."""
        return self.cache.add(LiveSession(self.store, session, [], policies))

    def pin(self, live: LiveSession) -> None:
        live.pins += 1
        self._pinned[(live.tenant, live.id)] = live

    def unpin(self, live: LiveSession) -> None:
        live.pins -= 1
        if live.pins <= 0:
            live.pins = 0
            key = (live.tenant, live.id)
            if self._pinned.get(key) is live:
                del self._pinned[key]
            self.cache.resize(live)

    def discard(self, tenant: str, session_id: str) -> None:
        self.cache.discard(tenant, session_id)
        self._pinned.pop((tenant, session_id), None)

    def resize(self, live: LiveSession) -> None:
        self.cache.resize(live)

    def __len__(self) -> int:
        return len(self.cache)
