"""`SQLiteStore`: the default store, one file, WAL, one writer thread with group commit.

Layout of the work:

    event loop ── write ops ──▶ writer thread (one connection)
               ◀─ one wake-up per batch ── BEGIN IMMEDIATE; op; op; …; COMMIT
               ── read ops ───▶ reader threads (one connection each, query_only)
               ◀─ one wake-up per batch ──

Every write is a function run by the writer thread on its connection. The writer takes
whatever is queued (up to `batch_max` operations) and runs it in ONE transaction, each
operation inside its own SAVEPOINT (unless it is alone), so a commit (the expensive part) is
shared by every operation that arrived while the previous batch ran, and an operation that
fails (a lost compare-and-set, a missing session) is rolled back alone without failing its
batch-mates. Results go back to the event loop with one `call_soon_threadsafe` per batch.
WAL lets the readers run beside the writer; a future resolves only after COMMIT, so a read
issued after an awaited write sees it. WAL checkpoints run on a reader thread, not inside
the writer's COMMIT (see `_after_write_batch`).

    store = SQLiteStore("/var/lib/roost/roost.db")
    await store.open()
    version = await store.append("default", "s1", [Event(type="message")], expected_version=0)
    await store.close()

`synchronous=NORMAL` (the default) does not fsync each commit: a power cut may lose the last
transactions but never corrupts the file; use "FULL" when that matters more than latency.

Threads are owned: `close()` stops and joins them after finishing the queued work. A store
that is never closed stops its threads, after running what was queued, once the main thread
has ended, so a forgotten `close()` does not hang interpreter exit. Use a store from one
event loop at a time. A cancelled call may still have been applied if the writer had already
started it; a caller that needs to know re-reads the session.

The fleet (several processes sharing the file): `claim_run`, `renew_ownership` and
`claim_idempotency_key` are single statements (or a check and a write) inside the writer's
BEGIN IMMEDIATE transaction, so they are atomic across processes too. Leases are on each
process's wall clock: processes sharing a file share a host, hence a clock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from roost.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    RoostError,
    RunNotFound,
    SessionNotFound,
    StoreError,
    StoreUnavailable,
    VersionConflict,
)
from roost.sessions import codec
from roost.sessions.records import (
    TERMINAL_STATUSES,
    Event,
    IdempotencyRecord,
    Page,
    RunRecord,
    Session,
    now,
)
from roost.sessions.store import CLAIMABLE_STATUSES, MAX_LIST_RUNS
from roost.sessions.usage import (
    MAX_USAGE_GROUPS,
    UsageTotals,
    check_group_by,
    check_window,
    totals_from_rows,
)

T = TypeVar("T")

_SYNCHRONOUS_MODES: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
# How often an idle thread checks whether the interpreter is exiting with the store unclosed.
_IDLE_POLL_S: Final = 0.5
# Sessions deleted per write operation by expire_sessions: each cascades to its events, and
# one huge transaction would stall every other writer behind it.
_EXPIRE_CHUNK: Final = 100
# Background WAL checkpoints: after this many write ops or commits, whichever comes first
# (SQLite's own default is every 1000 WAL pages; a small commit dirties 3-5 pages).
_CHECKPOINT_AFTER_OPS: Final = 1000
_CHECKPOINT_AFTER_COMMITS: Final = 250
_WAL_BACKSTOP_PAGES: Final = 20_000

# -- schema -------------------------------------------------------------------------------
# Migration N (1-based) is _MIGRATIONS[N - 1]; append new ones, never edit applied ones.
# Sessions are a rowid table because state can be large (overflow pages are cheap there);
# events are WITHOUT ROWID so one session's log is clustered by (tenant, session_id, seq).
# Children cascade from sessions: deleting or expiring a session takes its log, runs and
# lease in the same statement.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE sessions (
            tenant TEXT NOT NULL, id TEXT NOT NULL, agent TEXT NOT NULL, user_id TEXT,
            state TEXT NOT NULL, metadata TEXT NOT NULL,
            version INTEGER NOT NULL, last_seq INTEGER NOT NULL,
            created_at REAL NOT NULL, updated_at REAL NOT NULL, expires_at REAL,
            PRIMARY KEY (tenant, id))""",
        "CREATE INDEX sessions_by_created ON sessions (tenant, created_at DESC, id DESC)",
        "CREATE INDEX sessions_by_agent ON sessions (tenant, agent, created_at DESC, id DESC)",
        """CREATE INDEX sessions_by_user ON sessions (tenant, user_id, created_at DESC, id DESC)
            WHERE user_id IS NOT NULL""",
        "CREATE INDEX sessions_by_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL",
        """CREATE TABLE events (
            tenant TEXT NOT NULL, session_id TEXT NOT NULL, seq INTEGER NOT NULL,
            run_id TEXT, type TEXT NOT NULL, data TEXT NOT NULL, ts REAL NOT NULL,
            PRIMARY KEY (tenant, session_id, seq),
            FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
        ) WITHOUT ROWID""",
        """CREATE TABLE runs (
            tenant TEXT NOT NULL, id TEXT NOT NULL, session_id TEXT NOT NULL,
            agent TEXT NOT NULL, status TEXT NOT NULL, input TEXT NOT NULL, output TEXT,
            deadline REAL, attempt INTEGER NOT NULL, usage TEXT NOT NULL, error TEXT,
            created_at REAL NOT NULL, updated_at REAL NOT NULL,
            PRIMARY KEY (tenant, id),
            FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE)""",
        "CREATE INDEX runs_by_session ON runs (tenant, session_id, created_at DESC, id DESC)",
        "CREATE INDEX runs_by_tenant ON runs (tenant, created_at DESC, id DESC)",
        "CREATE INDEX runs_by_status ON runs (tenant, status, created_at DESC, id DESC)",
        """CREATE TABLE leases (
            tenant TEXT NOT NULL, session_id TEXT NOT NULL, owner TEXT NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (tenant, session_id),
            FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
        ) WITHOUT ROWID""",
    ),
    # 2: the model that served a run, for usage by model. Adding a column with a constant
    # default only rewrites the schema, not the rows: instant on any size of database, and
    # runs written before it read back with model "". Usage by (tenant, created_at) ranges
    # uses runs_by_tenant from migration 1.
    ("ALTER TABLE runs ADD COLUMN model TEXT NOT NULL DEFAULT ''",),
    # 3: a fleet sharing the file (issue 11). Run ownership: nullable columns, so old runs
    # read back unowned. Partial indexes keep what is polled every second (claimable runs)
    # as small as the runs in flight. Events by run, so one run's events are read without
    # the rest of its log. Idempotency keys and agent states.
    (
        "ALTER TABLE runs ADD COLUMN owner TEXT",
        "ALTER TABLE runs ADD COLUMN lease_expires_at REAL",
        "CREATE INDEX runs_by_owner ON runs (owner) WHERE owner IS NOT NULL",
        """CREATE INDEX runs_by_lease ON runs (lease_expires_at)
            WHERE status IN ('queued', 'running') AND lease_expires_at IS NOT NULL""",
        "CREATE INDEX runs_interrupted ON runs (lease_expires_at) WHERE status = 'interrupted'",
        """CREATE INDEX events_by_run ON events (tenant, session_id, run_id, seq)
            WHERE run_id IS NOT NULL""",
        "CREATE INDEX leases_by_owner ON leases (owner)",
        """CREATE TABLE idempotency_keys (
            tenant TEXT NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL,
            fingerprint TEXT NOT NULL, value TEXT NOT NULL,
            created_at REAL NOT NULL, expires_at REAL NOT NULL,
            PRIMARY KEY (tenant, scope, key)) WITHOUT ROWID""",
        "CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at)",
        """CREATE TABLE agent_states (
            scope TEXT NOT NULL, agent TEXT NOT NULL, state TEXT NOT NULL,
            updated_at REAL NOT NULL, PRIMARY KEY (scope, agent)) WITHOUT ROWID""",
    ),
    # 4 (issue 15, approvals; PostgreSQL 0008): runs waiting for a person, by the wait's
    # deadline (their lease_expires_at), for the fleet-wide timeout scan.
    ("CREATE INDEX runs_waiting ON runs (lease_expires_at) WHERE status = 'waiting'",),
    # 5 (issue 16; PostgreSQL 0010): child runs (roost.tools.agent_tool) name the run that
    # called them; nullable, so
    # old runs read back without a parent.
    (
        "ALTER TABLE runs ADD COLUMN parent_run_id TEXT",
        """CREATE INDEX runs_by_parent ON runs (tenant, parent_run_id)
            WHERE parent_run_id IS NOT NULL""",
    ),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

_SESSION_COLUMNS: Final = (
    "id, tenant, agent, user_id, state, metadata, version, last_seq,"
    " created_at, updated_at, expires_at"
)
_RUN_COLUMNS: Final = (
    "tenant, id, session_id, agent, status, input, output, deadline, attempt, usage, error,"
    " created_at, updated_at, model, owner, lease_expires_at, parent_run_id"
)
_EVENT_COLUMNS: Final = "seq, run_id, type, data, ts"


@dataclass(slots=True)
class SQLiteStatistics:
    """Counters the store keeps about its own work (read by metrics and the bench)."""

    write_batches: int = 0
    write_ops: int = 0
    write_ops_failed: int = 0
    largest_batch: int = 0
    read_ops: int = 0
    checkpoints: int = 0
    chore_failures: int = 0
    writes_queued: int = 0
    reads_queued: int = 0


class SQLiteStore:
    """The `Store` on one SQLite file. See the module docstring for how work flows."""

    backend = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        busy_timeout_s: float = 5.0,
        batch_max: int = 256,
        synchronous: str = "NORMAL",
        read_threads: int = 2,
    ) -> None:
        problems: list[tuple[str, str]] = []
        if not path or path == ":memory:" or path.startswith("file:"):
            problems.append(("store.url", "give a file path; use memory:// for an in-memory store"))
        if busy_timeout_s < 0:
            problems.append(("store.busy_timeout_s", "must be >= 0"))
        if batch_max < 1:
            problems.append(("store.batch_max", "must be >= 1"))
        if synchronous.upper() not in _SYNCHRONOUS_MODES:
            problems.append(("store.synchronous", f"one of {sorted(_SYNCHRONOUS_MODES)}"))
        if read_threads < 1:
            problems.append(("store.read_threads", "must be >= 1"))
        if problems:
            raise ConfigError("invalid sqlite store settings", problems)
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._batch_max = batch_max
        self._synchronous = synchronous.upper()
        self._read_threads = read_threads
        # Guards `_accepting` against a worker thread that stops on its own (see _Worker):
        # a submission either lands in a queue a worker will drain, or is refused.
        self._gate = threading.Lock()
        self._accepting = False
        self._refusal = "sqlite store is not open"
        self._writes: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._lifecycle = asyncio.Lock()
        # Writer-thread state for background checkpoints (see _after_write_batch).
        self._checkpoint_pending = False
        self._ops_since_checkpoint = 0
        self._commits_since_checkpoint = 0

    # -- lifecycle --------------------------------------------------------------
    async def open(self) -> None:
        async with self._lifecycle:
            if self._workers:
                return
            self._writes, self._reads = queue.SimpleQueue(), queue.SimpleQueue()
            self._checkpoint_pending = False
            # The writer goes first: it sets WAL mode and migrates before any reader connects.
            writer = _Worker(
                "roost-sqlite-writer",
                self._writes,
                self._connect_writer,
                _run_write_batch,
                self._batch_max,
                self,
                after_batch=self._after_write_batch,
            )
            self._workers = [writer]
            try:
                await writer.start()
                for n in range(self._read_threads):
                    reader = _Worker(
                        f"roost-sqlite-reader-{n}",
                        self._reads,
                        self._connect_reader,
                        _run_read_batch,
                        self._batch_max,
                        self,
                    )
                    self._workers.append(reader)
                    await reader.start()
            except BaseException:
                await self._stop_workers()
                raise
            with self._gate:
                self._accepting = True

    async def close(self) -> None:
        """Finish the queued work, then stop and join the threads. Idempotent."""
        async with self._lifecycle:
            await self._stop_workers()

    async def ping(self) -> None:
        await self._read(_ping)

    def statistics(self) -> SQLiteStatistics:
        """Totals since `open()`. Each thread counts its own work, so no count is lost."""
        total = SQLiteStatistics(
            writes_queued=self._writes.qsize(), reads_queued=self._reads.qsize()
        )
        for worker in self._workers:
            for field in dataclasses.fields(SQLiteStatistics):
                mine, theirs = getattr(total, field.name), getattr(worker.stats, field.name)
                merged = max(mine, theirs) if field.name == "largest_batch" else mine + theirs
                setattr(total, field.name, merged)
        return total

    # -- sessions ---------------------------------------------------------------
    async def create_session(self, session: Session) -> Session:
        row = (
            session.tenant,
            session.id,
            session.agent,
            session.user_id,
            codec.encode_text(session.state),
            codec.encode_text(session.metadata),
            session.version,
            session.last_seq,
            session.created_at,
            session.updated_at,
            session.expires_at,
        )
        await self._write(_create_session, row)
        return codec.decode_session(codec.encode(session))

    async def get_session(self, tenant: str, session_id: str) -> Session:
        return await self._read(_get_session, tenant, session_id)

    async def list_sessions(
        self,
        tenant: str,
        *,
        agent: str | None = None,
        user_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        _check_limit(limit, minimum=1)
        after = codec.decode_cursor(cursor) if cursor is not None else None
        sql, params = _list_sessions_query(tenant, agent, user_id, after, limit + 1)
        sessions = await self._read(_select_sessions, sql, params)
        next_cursor = None
        if len(sessions) > limit:
            del sessions[limit:]
            next_cursor = codec.encode_cursor(sessions[-1].created_at, sessions[-1].id)
        return Page(items=sessions, next_cursor=next_cursor)

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        return await self._write(_delete_session, tenant, session_id)

    async def patch_state(
        self,
        tenant: str,
        session_id: str,
        delta: dict[str, Any],
        expected_version: int | None = None,
    ) -> Session:
        if not isinstance(delta, dict):
            raise InvalidInput("a state delta must be a JSON object", field="delta")
        # Encoded here, not in the writer: a bad value fails before it is queued, and later
        # mutations of `delta` by the caller cannot reach the write.
        encoded = codec.encode(delta)
        return await self._write(_patch_state, tenant, session_id, encoded, expected_version, now())

    # -- the event log ----------------------------------------------------------
    async def append(
        self,
        tenant: str,
        session_id: str,
        events: list[Event],
        expected_version: int,
        run: RunRecord | None = None,
    ) -> int:
        rows = [(e.run_id, e.type, codec.encode_text(e.data), e.ts) for e in events]
        run_row = None
        if run is not None:
            _check_run_owner(run, tenant, session_id)
            run_row = _run_row(run)
        version, first_seq = await self._write(
            _append, tenant, session_id, expected_version, rows, run_row, now()
        )
        for offset, event in enumerate(events):
            event.seq = first_seq + offset
        return version

    async def read_events(
        self, tenant: str, session_id: str, *, after: int = 0, limit: int = 100
    ) -> list[Event]:
        _check_limit(limit, minimum=0)
        return await self._read(_read_events, tenant, session_id, after, limit)

    async def tail_events(self, tenant: str, session_id: str, limit: int) -> list[Event]:
        _check_limit(limit, minimum=0)
        return await self._read(_tail_events, tenant, session_id, limit)

    # -- runs -------------------------------------------------------------------
    async def put_run(self, run: RunRecord) -> None:
        await self._write(_put_run, _run_row(run))

    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        return await self._read(_get_run, tenant, run_id)

    async def list_runs(
        self,
        tenant: str,
        *,
        session_id: str | None = None,
        status: str | None = None,
        agent: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        _check_limit(limit, minimum=1, maximum=MAX_LIST_RUNS)
        since, until = check_window(since, until)
        sql, params = _list_runs_query(
            tenant, session_id, status, limit, agent=agent, since=since, until=until
        )
        return await self._read(_select_runs, sql, params)

    async def usage_summary(
        self,
        tenant: str,
        *,
        group_by: Sequence[str] = ("agent", "model"),
        since: float | None = None,
        until: float | None = None,
    ) -> list[UsageTotals]:
        keys = check_group_by(group_by)
        since, until = check_window(since, until)
        sql, params = _usage_query(tenant, keys, since, until)
        rows = await self._read(_select_rows, sql, params)
        return totals_from_rows(keys, rows)

    # -- leases -----------------------------------------------------------------
    async def acquire_lease(self, tenant: str, session_id: str, owner: str, ttl_s: float) -> bool:
        if not ttl_s > 0:
            raise InvalidInput("lease ttl_s must be positive", field="ttl_s")
        return await self._write(_acquire_lease, tenant, session_id, owner, ttl_s)

    async def release_lease(self, tenant: str, session_id: str, owner: str) -> None:
        await self._write(_release_lease, tenant, session_id, owner)

    # -- maintenance ------------------------------------------------------------
    async def expire_sessions(self, now: float) -> int:
        total = 0
        while True:
            deleted = await self._write(_expire_sessions, now, _EXPIRE_CHUNK)
            total += deleted
            if deleted < _EXPIRE_CHUNK:
                break
        await self._write(_expire_idempotency_keys, now)
        return total

    # -- the fleet --------------------------------------------------------------
    async def read_run_events(
        self, tenant: str, session_id: str, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[Event]:
        _check_limit(limit, minimum=0)
        return await self._read(_read_run_events, tenant, session_id, run_id, after, limit)

    async def claim_run(
        self,
        tenant: str,
        run_id: str,
        owner: str,
        ttl_s: float,
        *,
        statuses: Collection[str] = CLAIMABLE_STATUSES,
    ) -> RunRecord | None:
        _check_ttl(ttl_s)
        return await self._write(_claim_run, tenant, run_id, owner, ttl_s, tuple(statuses))

    async def renew_ownership(self, owner: str, ttl_s: float) -> int:
        _check_ttl(ttl_s)
        return await self._write(_renew_ownership, owner, ttl_s)

    async def claimable_runs(
        self, *, include_interrupted: bool = False, limit: int = 100
    ) -> list[RunRecord]:
        _check_limit(limit, minimum=1, maximum=MAX_LIST_RUNS)
        return await self._read(_claimable_runs, include_interrupted, limit)

    async def claim_idempotency_key(
        self, tenant: str, scope: str, key: str, fingerprint: str, value: str, ttl_s: float
    ) -> tuple[bool, IdempotencyRecord]:
        _check_ttl(ttl_s)
        return await self._write(
            _claim_idempotency_key, tenant, scope, key, fingerprint, value, ttl_s)

    async def set_agent_state(self, scope: str, agent: str, state: str) -> None:
        await self._write(_set_agent_state, scope, agent, state)

    async def agent_states(self) -> dict[tuple[str, str], str]:
        rows = await self._read(_select_rows, "SELECT scope, agent, state FROM agent_states", ())
        return {(row[0], row[1]): row[2] for row in rows}

    # -- plumbing ---------------------------------------------------------------
    def _write(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return self._submit(self._writes, fn, args)

    def _read(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return self._submit(self._reads, fn, args)

    def _submit(
        self, target: queue.SimpleQueue[_Item], fn: Callable[..., T], args: tuple[Any, ...]
    ) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._gate:
            if not self._accepting:
                raise StoreUnavailable(self._refusal)
            target.put((fn, args, future))
        return future

    def _after_write_batch(self, ops: int) -> None:
        """Writer thread: ask a reader to checkpoint the WAL once enough has been written.

        SQLite's own auto-checkpoint would run inside the writer's COMMIT and stall every
        batch queued behind it for milliseconds (it was most of the p99 append latency); a
        reader connection copies the WAL back while the writer keeps committing.
        """
        self._ops_since_checkpoint += ops
        self._commits_since_checkpoint += 1
        if self._checkpoint_pending or (
            self._ops_since_checkpoint < _CHECKPOINT_AFTER_OPS
            and self._commits_since_checkpoint < _CHECKPOINT_AFTER_COMMITS
        ):
            return
        self._checkpoint_pending = True
        self._ops_since_checkpoint = self._commits_since_checkpoint = 0
        self._reads.put(self._checkpoint)

    def _checkpoint(self, conn: sqlite3.Connection, stats: SQLiteStatistics) -> None:
        """Reader thread: a PASSIVE checkpoint never waits for the writer or other readers."""
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            stats.checkpoints += 1
        finally:
            self._checkpoint_pending = False

    def _refuse(self, reason: str) -> None:
        """Called by a worker thread that stops on its own: later calls fail fast."""
        with self._gate:
            if self._accepting:
                self._accepting = False
                self._refusal = reason

    async def _stop_workers(self) -> None:
        with self._gate:
            self._accepting = False
            self._refusal = "sqlite store is closed"
        # Readers first: their queue is drained before the writer's connection goes away.
        for worker in reversed(self._workers):
            worker.queue.put(_STOP)
        for worker in reversed(self._workers):
            await worker.join()
        self._workers = []

    def _connect_writer(self) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {directory}: {exc}") from exc
        conn = self._connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot use WAL journal mode (got {mode})")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            # Checkpoints run on a reader (see _after_write_batch); this is only the backstop
            # that bounds the WAL if they cannot keep up.
            conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_BACKSTOP_PAGES}")
            # Keep the WAL file from staying huge after a burst; 64 MiB.
            conn.execute("PRAGMA journal_size_limit = 67108864")
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA query_only = ON")
        return conn

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the module never opens transactions behind our back; the
        # writer issues BEGIN/COMMIT itself, readers run each SELECT in autocommit.
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            conn.execute("PRAGMA temp_store = MEMORY")
        except BaseException:
            conn.close()
            raise
        return conn


# -- worker threads ------------------------------------------------------------------------
# An operation: the function to run on the connection, its arguments, and the future its
# result goes to (on the future's own loop). An outcome: (future, ok, result or exception). A chore is internal work with no
# caller waiting (a WAL checkpoint). `_STOP` tells one worker to finish.
_Op = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]
_Chore = Callable[[sqlite3.Connection, SQLiteStatistics], None]
_Item = _Op | _Chore | None
_Outcome = tuple[asyncio.Future[Any], bool, Any]
_STOP: Final = None
_BatchRunner = Callable[[sqlite3.Connection, list[_Op], SQLiteStatistics], list[_Outcome]]


class _Worker:
    """One thread, one connection, serving batches from a queue until it reads `_STOP`."""

    def __init__(
        self,
        name: str,
        work: queue.SimpleQueue[_Item],
        connect: Callable[[], sqlite3.Connection],
        run_batch: _BatchRunner,
        batch_max: int,
        store: SQLiteStore,
        after_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.queue = work
        self.stats = SQLiteStatistics()
        self._connect = connect
        self._run_batch = run_batch
        self._after_batch = after_batch
        self._batch_max = batch_max
        self._store = store
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name=name)

    async def start(self) -> None:
        self._thread.start()
        await asyncio.wrap_future(self._ready)

    async def join(self) -> None:
        if self._thread.ident is None:
            return  # never started
        # Waiting on a future, not on join(): the loop keeps running while the queue drains.
        await asyncio.wrap_future(self._stopped)
        self._thread.join()

    def _main(self) -> None:
        try:
            try:
                conn = self._connect()
            except BaseException as exc:
                self._ready.set_exception(_translate(exc))
                return
            self._ready.set_result(None)
            try:
                self._serve(conn)
            except BaseException as exc:
                self._store._refuse(f"sqlite store stopped: {exc!r}")
                self._fail_queued()
                raise
            finally:
                conn.close()
        finally:
            self._stopped.set_result(None)

    def _serve(self, conn: sqlite3.Connection) -> None:
        work, batch_max, stats = self.queue, self._batch_max, self.stats
        exiting = False
        while True:
            try:
                item = work.get(timeout=_IDLE_POLL_S)
            except queue.Empty:
                if exiting:
                    return
                if threading.main_thread().is_alive():
                    continue
                # The interpreter is exiting and nobody closed the store: refuse new work,
                # finish what is queued, stop. Without this, exit would wait on us forever.
                self._store._refuse("sqlite store stopped at interpreter exit")
                exiting = True
                continue
            if item is _STOP:
                return
            batch: list[_Op] = []
            stop = False
            while True:
                if isinstance(item, tuple):
                    batch.append(item)
                elif item is _STOP:
                    stop = True
                    break
                else:
                    _run_chore(conn, item, stats)
                if len(batch) >= batch_max:
                    break
                try:
                    item = work.get_nowait()
                except queue.Empty:
                    break
            if batch:
                outcomes = self._run_batch(conn, batch, stats)
                # Before delivery: a chore it schedules is queued ahead of any read that a
                # caller issues once it sees its write done.
                if self._after_batch is not None:
                    self._after_batch(len(batch))
                _deliver(outcomes)
            if stop:
                return

    def _fail_queued(self) -> None:
        outcomes: list[_Outcome] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple):
                outcomes.append((item[2], False, StoreUnavailable("sqlite store stopped")))
        _deliver(outcomes)


def _run_chore(conn: sqlite3.Connection, chore: _Chore, stats: SQLiteStatistics) -> None:
    try:
        chore(conn, stats)
    except Exception:
        # Chores are retried by whoever scheduled them; a failure is only counted.
        stats.chore_failures += 1


def _run_write_batch(
    conn: sqlite3.Connection, batch: list[_Op], stats: SQLiteStatistics
) -> list[_Outcome]:
    # An op whose caller gave up before we started it is skipped, not applied.
    live = [op for op in batch if not op[2].cancelled()]
    outcomes: list[_Outcome] = []
    if not live:
        return outcomes
    # A lone op needs no savepoint: its failure rolls back the whole transaction.
    alone = len(live) == 1
    try:
        conn.execute("BEGIN IMMEDIATE")
        for fn, args, future in live:
            if not alone:
                conn.execute("SAVEPOINT op")
            try:
                value = fn(conn, *args)
            except Exception as exc:
                outcomes.append((future, False, _translate(exc)))
                if alone:
                    _rollback_quietly(conn)
                else:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
            else:
                if not alone:
                    conn.execute("RELEASE op")
                outcomes.append((future, True, value))
        if conn.in_transaction:
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        # BEGIN, a savepoint or COMMIT failed: nothing of this batch is durable. Ops that had
        # failed on their own keep their error; every other op gets the batch's.
        _rollback_quietly(conn)
        done = {id(o[0]): o for o in outcomes if not o[1]}
        outcomes = [done.get(id(op[2])) or (op[2], False, _translate(exc)) for op in live]
    stats.write_batches += 1
    stats.write_ops += len(live)
    stats.write_ops_failed += sum(1 for o in outcomes if not o[1])
    stats.largest_batch = max(stats.largest_batch, len(live))
    return outcomes


def _run_read_batch(
    conn: sqlite3.Connection, batch: list[_Op], stats: SQLiteStatistics
) -> list[_Outcome]:
    outcomes: list[_Outcome] = []
    for fn, args, future in batch:
        if future.cancelled():
            continue
        try:
            outcomes.append((future, True, fn(conn, *args)))
        except Exception as exc:
            outcomes.append((future, False, _translate(exc)))
    stats.read_ops += len(outcomes)
    return outcomes


def _deliver(outcomes: list[_Outcome]) -> None:
    """Hand a batch's outcomes to their event loops: one wake-up per loop per batch."""
    if not outcomes:
        return
    first_loop = outcomes[0][0].get_loop()
    if all(o[0].get_loop() is first_loop for o in outcomes):
        groups = {first_loop: outcomes}
    else:
        groups = {}
        for outcome in outcomes:
            groups.setdefault(outcome[0].get_loop(), []).append(outcome)
    for loop, items in groups.items():
        # A closed loop has nobody left waiting for these results.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, items)


def _resolve(outcomes: list[_Outcome]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # cancelled while queued or running
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    # SQLite may have rolled back already (e.g. after SQLITE_FULL): then ROLLBACK fails.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


# Primary result codes that mean "the database cannot be used right now" rather than "this
# request or this file is wrong".
_UNAVAILABLE_CODES: Final = frozenset(
    {
        5,  # SQLITE_BUSY
        6,  # SQLITE_LOCKED
        7,  # SQLITE_NOMEM
        8,  # SQLITE_READONLY
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
    }
)


def _translate(exc: BaseException) -> BaseException:
    """Roost's error for what an operation raised; a driver exception never escapes."""
    if isinstance(exc, RoostError):
        return exc
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        kind = (
            StoreUnavailable
            if code is not None and code & 0xFF in _UNAVAILABLE_CODES
            else StoreError
        )
        error: RoostError = kind(f"sqlite: {exc}", code=getattr(exc, "sqlite_errorname", None))
    elif isinstance(exc, Exception):
        error = StoreError(f"sqlite store: {exc!r}")
    else:
        return exc
    error.__cause__ = exc
    return error


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        current = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {current} is newer than this Roost ({SCHEMA_VERSION})"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (version, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        _rollback_quietly(conn)
        raise


# -- operations: run on a worker thread, on its connection -------------------------------
def _ping(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()


def _create_session(conn: sqlite3.Connection, row: tuple[Any, ...]) -> None:
    cur = conn.execute(
        "INSERT INTO sessions (tenant, id, agent, user_id, state, metadata, version, last_seq,"
        " created_at, updated_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, id) DO NOTHING",
        row,
    )
    if cur.rowcount == 0:
        raise Conflict(f"session {row[1]} already exists", session_id=row[1])


def _get_session(conn: sqlite3.Connection, tenant: str, session_id: str) -> Session:
    row = conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE tenant = ? AND id = ?",
        (tenant, session_id),
    ).fetchone()
    if row is None:
        raise _session_not_found(session_id)
    return _session_from_row(row)


def _select_sessions(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Session]:
    return [_session_from_row(row) for row in conn.execute(sql, params).fetchall()]


def _delete_session(conn: sqlite3.Connection, tenant: str, session_id: str) -> bool:
    cur = conn.execute("DELETE FROM sessions WHERE tenant = ? AND id = ?", (tenant, session_id))
    return cur.rowcount > 0


def _patch_state(
    conn: sqlite3.Connection,
    tenant: str,
    session_id: str,
    delta_json: bytes,
    expected_version: int | None,
    updated_at: float,
) -> Session:
    row = conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE tenant = ? AND id = ?",
        (tenant, session_id),
    ).fetchone()
    if row is None:
        raise _session_not_found(session_id)
    session = _session_from_row(row)
    if expected_version is not None and session.version != expected_version:
        raise VersionConflict(session_id, expected_version, session.version)
    state = session.state
    for key, value in codec.decode_object(delta_json).items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    session.version += 1
    session.updated_at = updated_at
    conn.execute(
        "UPDATE sessions SET state = ?, version = ?, updated_at = ? WHERE tenant = ? AND id = ?",
        (codec.encode_text(state), session.version, updated_at, tenant, session_id),
    )
    return session


def _append(
    conn: sqlite3.Connection,
    tenant: str,
    session_id: str,
    expected_version: int,
    rows: list[tuple[str | None, str, str, float]],
    run_row: tuple[Any, ...] | None,
    updated_at: float,
) -> tuple[int, int]:
    # Check first, then write: a lost compare-and-set (the common failure under contention)
    # costs one indexed read and writes nothing. Only this thread writes, so nothing can
    # move between the check and the update.
    found = conn.execute(
        "SELECT version, last_seq FROM sessions WHERE tenant = ? AND id = ?",
        (tenant, session_id),
    ).fetchone()
    if found is None:
        raise _session_not_found(session_id)
    version, last_seq = found
    if version != expected_version:
        raise VersionConflict(session_id, expected_version, version)
    conn.execute(
        "UPDATE sessions SET version = ?, last_seq = ?, updated_at = ? WHERE tenant = ? AND id = ?",
        (version + 1, last_seq + len(rows), updated_at, tenant, session_id),
    )
    if len(rows) == 1:
        run_id, type_, data, ts = rows[0]
        conn.execute(_INSERT_EVENT, (tenant, session_id, last_seq + 1, run_id, type_, data, ts))
    elif rows:
        conn.executemany(
            _INSERT_EVENT,
            [
                (tenant, session_id, last_seq + n, run_id, type_, data, ts)
                for n, (run_id, type_, data, ts) in enumerate(rows, start=1)
            ],
        )
    if run_row is not None:
        conn.execute(_UPSERT_RUN, run_row)
    return version + 1, last_seq + 1


def _read_events(
    conn: sqlite3.Connection, tenant: str, session_id: str, after: int, limit: int
) -> list[Event]:
    rows = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE tenant = ? AND session_id = ? AND seq > ?"
        " ORDER BY seq LIMIT ?",
        (tenant, session_id, after, limit),
    ).fetchall()
    if not rows:
        # Events die with their session, so any row proves it exists; only an empty answer
        # needs the second look to tell "nothing new" from "no such session".
        _require_session(conn, tenant, session_id)
    return [_event_from_row(row) for row in rows]


def _tail_events(conn: sqlite3.Connection, tenant: str, session_id: str, limit: int) -> list[Event]:
    rows = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE tenant = ? AND session_id = ?"
        " ORDER BY seq DESC LIMIT ?",
        (tenant, session_id, limit),
    ).fetchall()
    if not rows:
        _require_session(conn, tenant, session_id)
    rows.reverse()
    return [_event_from_row(row) for row in rows]


_INSERT_EVENT: Final = (
    "INSERT INTO events (tenant, session_id, seq, run_id, type, data, ts)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_RUN: Final = (
    f"INSERT INTO runs ({_RUN_COLUMNS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (tenant, id) DO UPDATE SET session_id = excluded.session_id,"
    " agent = excluded.agent, status = excluded.status, input = excluded.input,"
    " output = excluded.output, deadline = excluded.deadline, attempt = excluded.attempt,"
    " usage = excluded.usage, error = excluded.error, created_at = excluded.created_at,"
    " updated_at = excluded.updated_at, model = excluded.model, owner = excluded.owner,"
    " parent_run_id = excluded.parent_run_id,"
    # A write never shortens a lease its owner holds (see records.kept_lease).
    " lease_expires_at = CASE WHEN excluded.lease_expires_at IS NOT NULL"
    " AND runs.owner IS excluded.owner THEN max(coalesce(runs.lease_expires_at,"
    " excluded.lease_expires_at), excluded.lease_expires_at)"
    " ELSE excluded.lease_expires_at END"
)


def _put_run(conn: sqlite3.Connection, row: tuple[Any, ...]) -> None:
    _require_session(conn, row[0], row[2])
    conn.execute(_UPSERT_RUN, row)


def _get_run(conn: sqlite3.Connection, tenant: str, run_id: str) -> RunRecord:
    row = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE tenant = ? AND id = ?", (tenant, run_id)
    ).fetchone()
    if row is None:
        raise RunNotFound(f"run {run_id} not found", run_id=run_id)
    return _run_from_row(row)


def _select_runs(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[RunRecord]:
    return [_run_from_row(row) for row in conn.execute(sql, params).fetchall()]


def _select_rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def _acquire_lease(
    conn: sqlite3.Connection, tenant: str, session_id: str, owner: str, ttl_s: float
) -> bool:
    _require_session(conn, tenant, session_id)
    # Wall clock: leases are compared across processes (and hosts sharing the file).
    clock = time.time()
    cur = conn.execute(
        "INSERT INTO leases (tenant, session_id, owner, expires_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (tenant, session_id) DO UPDATE SET"
        " owner = excluded.owner, expires_at = excluded.expires_at"
        " WHERE leases.owner = excluded.owner OR leases.expires_at <= ?",
        (tenant, session_id, owner, clock + ttl_s, clock),
    )
    return cur.rowcount == 1


def _release_lease(conn: sqlite3.Connection, tenant: str, session_id: str, owner: str) -> None:
    conn.execute(
        "DELETE FROM leases WHERE tenant = ? AND session_id = ? AND owner = ?",
        (tenant, session_id, owner),
    )


# -- the fleet: claims are one statement in a BEGIN IMMEDIATE transaction, so they are
# atomic across every process sharing the file. Leases are on the wall clock (see leases).
def _read_run_events(
    conn: sqlite3.Connection, tenant: str, session_id: str, run_id: str, after: int, limit: int
) -> list[Event]:
    rows = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE tenant = ? AND session_id = ?"
        " AND run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (tenant, session_id, run_id, after, limit),
    ).fetchall()
    if not rows:
        _require_session(conn, tenant, session_id)
    return [_event_from_row(row) for row in rows]


def _claim_run(
    conn: sqlite3.Connection,
    tenant: str,
    run_id: str,
    owner: str,
    ttl_s: float,
    statuses: tuple[str, ...],
) -> RunRecord | None:
    clock = time.time()
    marks = ", ".join("?" * len(statuses))
    rows = conn.execute(
        "UPDATE runs SET owner = ?, lease_expires_at = ?, status = 'running',"
        " attempt = attempt + 1, error = NULL, updated_at = ?"
        f" WHERE tenant = ? AND id = ? AND status IN ({marks})"
        " AND (owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= ?)"
        f" RETURNING {_RUN_COLUMNS}",
        (owner, clock + ttl_s, clock, tenant, run_id, *statuses, clock),
    ).fetchall()
    if rows:
        return _run_from_row(rows[0])
    if conn.execute("SELECT 1 FROM runs WHERE tenant = ? AND id = ?", (tenant, run_id)).fetchone():
        return None
    raise RunNotFound(f"run {run_id} not found", run_id=run_id)


def _renew_ownership(conn: sqlite3.Connection, owner: str, ttl_s: float) -> int:
    clock = time.time()
    conn.execute(
        "UPDATE leases SET expires_at = ? WHERE owner = ? AND expires_at > ?",
        (clock + ttl_s, owner, clock),
    )
    terminal = sorted(TERMINAL_STATUSES)
    cur = conn.execute(
        "UPDATE runs SET lease_expires_at = ?"
        f" WHERE owner = ? AND status NOT IN ({', '.join('?' * len(terminal))})",
        (clock + ttl_s, owner, *terminal),
    )
    return cur.rowcount


# Each arm walks its partial index (runs_by_lease, runs_interrupted) in lease order and
# stops at the limit; the literals match the indexes' WHERE clauses, as SQLite requires.
_CLAIMABLE_RUNS: Final = (
    f"SELECT * FROM (SELECT {_RUN_COLUMNS} FROM runs"
    " WHERE status IN ('queued', 'running') AND lease_expires_at IS NOT NULL"
    " AND lease_expires_at <= ? ORDER BY lease_expires_at LIMIT ?)"
    f" UNION ALL SELECT * FROM (SELECT {_RUN_COLUMNS} FROM runs"
    " WHERE status = 'waiting' AND owner IS NULL AND lease_expires_at <= ?"
    " ORDER BY lease_expires_at LIMIT ?)"
    f" UNION ALL SELECT * FROM (SELECT {_RUN_COLUMNS} FROM runs"
    " WHERE ? AND status = 'interrupted'"
    " AND (owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= ?)"
    " ORDER BY lease_expires_at LIMIT ?)"
    " ORDER BY lease_expires_at, tenant, id LIMIT ?"
)


def _claimable_runs(
    conn: sqlite3.Connection, include_interrupted: bool, limit: int
) -> list[RunRecord]:
    clock = time.time()
    rows = conn.execute(
        _CLAIMABLE_RUNS, (clock, limit, clock, limit, include_interrupted, clock, limit, limit)
    ).fetchall()
    return [_run_from_row(row) for row in rows]


def _claim_idempotency_key(
    conn: sqlite3.Connection,
    tenant: str,
    scope: str,
    key: str,
    fingerprint: str,
    value: str,
    ttl_s: float,
) -> tuple[bool, IdempotencyRecord]:
    clock = time.time()
    row = conn.execute(
        "SELECT fingerprint, value, created_at, expires_at FROM idempotency_keys"
        " WHERE tenant = ? AND scope = ? AND key = ?",
        (tenant, scope, key),
    ).fetchone()
    if row is not None and row[3] > clock:
        return False, IdempotencyRecord(
            fingerprint=row[0], value=row[1], created_at=row[2], expires_at=row[3])
    conn.execute(
        "INSERT OR REPLACE INTO idempotency_keys VALUES (?, ?, ?, ?, ?, ?, ?)",
        (tenant, scope, key, fingerprint, value, clock, clock + ttl_s),
    )
    return True, IdempotencyRecord(
        fingerprint=fingerprint, value=value, created_at=clock, expires_at=clock + ttl_s)


def _set_agent_state(conn: sqlite3.Connection, scope: str, agent: str, state: str) -> None:
    conn.execute(
        "INSERT INTO agent_states VALUES (?, ?, ?, ?) ON CONFLICT (scope, agent)"
        " DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
        (scope, agent, state, time.time()),
    )


def _expire_idempotency_keys(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (before,)).rowcount


def _expire_sessions(conn: sqlite3.Connection, before: float, chunk: int) -> int:
    cur = conn.execute(
        "DELETE FROM sessions WHERE rowid IN"
        " (SELECT rowid FROM sessions WHERE expires_at <= ? LIMIT ?)",
        (before, chunk),
    )
    return cur.rowcount


# -- rows <-> records --------------------------------------------------------------------
def _list_sessions_query(
    tenant: str,
    agent: str | None,
    user_id: str | None,
    after: tuple[float, str] | None,
    limit: int,
) -> tuple[str, list[Any]]:
    where: list[str] = ["tenant = ?"]
    params: list[Any] = [tenant]
    if agent is not None:
        where.append("agent = ?")
        params.append(agent)
    if user_id is not None:
        where.append("user_id = ?")
        params.append(user_id)
    if after is not None:
        # A row-value comparison walks the (…, created_at DESC, id DESC) index from the
        # cursor on: pages cost the same at any depth.
        where.append("(created_at, id) < (?, ?)")
        params.extend(after)
    sql = (
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE {' AND '.join(where)}"
        " ORDER BY created_at DESC, id DESC LIMIT ?"
    )
    params.append(limit)
    return sql, params


def _list_runs_query(
    tenant: str,
    session_id: str | None,
    status: str | None,
    limit: int,
    *,
    agent: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> tuple[str, list[Any]]:
    # session_id and status pick their (…, created_at DESC, id DESC) index, the tenant index
    # serves the rest; the created_at bounds are a range on whichever is used, agent a filter.
    where, params = _run_window(tenant, since, until)
    for column, value in (("session_id", session_id), ("status", status), ("agent", agent)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    sql = (
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE {' AND '.join(where)}"
        " ORDER BY created_at DESC, id DESC LIMIT ?"
    )
    params.append(limit)
    return sql, params


def _run_window(
    tenant: str, since: float | None, until: float | None
) -> tuple[list[str], list[Any]]:
    where: list[str] = ["tenant = ?"]
    params: list[Any] = [tenant]
    if since is not None:
        where.append("created_at >= ?")
        params.append(since)
    if until is not None:
        where.append("created_at < ?")
        params.append(until)
    return where, params


# Group expressions of usage_summary. The time buckets are whole seconds divided in integer
# arithmetic (labelled in Python), so a bucket edge never depends on float rounding.
_USAGE_GROUPS: Final = {
    "agent": "agent",
    "model": "model",
    "status": "status",
    "day": "CAST(created_at AS INTEGER) / 86400",
    "hour": "CAST(created_at AS INTEGER) / 3600",
}


def _usage_query(
    tenant: str, keys: tuple[str, ...], since: float | None, until: float | None
) -> tuple[str, list[Any]]:
    where, params = _run_window(tenant, since, until)
    groups = [_USAGE_GROUPS[k] for k in keys]
    sql = (
        f"SELECT {''.join(g + ', ' for g in groups)}count(*),"
        " coalesce(sum(json_extract(usage, '$.input_tokens')), 0),"
        " coalesce(sum(json_extract(usage, '$.output_tokens')), 0),"
        " total(json_extract(usage, '$.cost'))"
        f" FROM runs WHERE {' AND '.join(where)}"
    )
    if groups:
        sql += f" GROUP BY {', '.join(groups)}"
    # One row past the cap tells the caller there were too many groups.
    sql += " LIMIT ?"
    params.append(MAX_USAGE_GROUPS + 1)
    return sql, params


def _session_from_row(row: tuple[Any, ...]) -> Session:
    return Session(
        id=row[0],
        tenant=row[1],
        agent=row[2],
        user_id=row[3],
        state=codec.decode_object(row[4]),
        metadata=codec.decode_object(row[5]),
        version=row[6],
        last_seq=row[7],
        created_at=row[8],
        updated_at=row[9],
        expires_at=row[10],
    )


def _event_from_row(row: tuple[Any, ...]) -> Event:
    return Event(
        seq=row[0], run_id=row[1], type=row[2], data=codec.decode_object(row[3]), ts=row[4]
    )


def _run_row(run: RunRecord) -> tuple[Any, ...]:
    return (
        run.tenant,
        run.id,
        run.session_id,
        run.agent,
        run.status,
        run.input,
        run.output,
        run.deadline,
        run.attempt,
        codec.encode_text(run.usage),
        None if run.error is None else codec.encode_text(run.error),
        run.created_at,
        run.updated_at,
        run.model,
        run.owner,
        run.lease_expires_at,
        run.parent_run_id,
    )


def _run_from_row(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(
        tenant=row[0],
        id=row[1],
        session_id=row[2],
        agent=row[3],
        status=row[4],
        input=row[5],
        output=row[6],
        deadline=row[7],
        attempt=row[8],
        usage=codec.decode_usage(row[9]),
        error=codec.decode_optional_object(row[10]),
        created_at=row[11],
        updated_at=row[12],
        model=row[13],
        owner=row[14],
        lease_expires_at=row[15],
        parent_run_id=row[16],
    )


def _require_session(conn: sqlite3.Connection, tenant: str, session_id: str) -> None:
    found = conn.execute(
        "SELECT 1 FROM sessions WHERE tenant = ? AND id = ?", (tenant, session_id)
    ).fetchone()
    if found is None:
        raise _session_not_found(session_id)


def _session_not_found(session_id: str) -> SessionNotFound:
    return SessionNotFound(f"session {session_id} not found", session_id=session_id)


def _check_limit(limit: int, *, minimum: int, maximum: int | None = None) -> None:
    if limit < minimum:
        raise InvalidInput(f"limit must be at least {minimum}", field="limit")
    if maximum is not None and limit > maximum:
        raise InvalidInput(f"limit must be at most {maximum}", field="limit")


def _check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise InvalidInput("ttl_s must be positive", field="ttl_s")


def _check_run_owner(run: RunRecord, tenant: str, session_id: str) -> None:
    if run.tenant != tenant or run.session_id != session_id:
        raise InvalidInput(
            f"run {run.id} belongs to session {run.session_id} of tenant {run.tenant}, "
            f"not session {session_id} of tenant {tenant}",
            field="run",
        )
