"""The fleet bus on PostgreSQL LISTEN/NOTIFY.

    bus = PostgresBus("postgresql://roost@db:5432/roost", schema="roost")

Channel names. PostgreSQL channel names are identifiers of at most 63 bytes, so channel `c`
becomes `roost.<schema[:20]>.<24 hex digits of blake2b(schema, c)>`: any channel fits, two
schemas (fleets, tests) sharing a database never hear each other, and the readable part says
whose it is.

Payloads. NOTIFY carries text shorter than 8000 bytes. A payload goes as `m` + its UTF-8 text,
or (not UTF-8, or holding a NUL) `b` + base64; `g` alone is a gap marker. A payload that does
not fit is not sent: its channel gets a gap marker, so subscribers re-read the store.

The writer sends a batch as one statement (`pg_notify` over `unnest` of two arrays): one round
trip and one transaction, so a batch is delivered whole and in order, and NOTIFY's commit-time
queue lock is taken once per batch, not per message. PostgreSQL folds identical
notifications within one transaction into one, so a batch is split where a (channel, payload)
pair repeats. The listener is one dedicated connection: LISTEN per channel, a `SELECT 1` when
idle for `health_check_s`, and asyncpg's termination callback to notice a lost connection.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
from typing import Any

import asyncpg

from roost.bus.base import BusLimits
from roost.bus.network import Batch, NetworkBus

NOTIFY_LIMIT = 8000  # bytes, exclusive: PostgreSQL's limit on a NOTIFY payload
# One statement for a batch: the function scan yields the rows, and so the notifications,
# in array order.
_NOTIFY = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)"
_TRANSIENT = (
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, terminated, ...
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, ...
)


@functools.lru_cache(maxsize=4096)
def wire_channel(schema: str, channel: str) -> str:
    digest = hashlib.blake2b(f"{schema}\0{channel}".encode(), digest_size=12).hexdigest()
    return f"roost.{schema[:20]}.{digest}"


def encode_payload(payload: bytes | None) -> str:
    if payload is None:
        return "g"
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        text = "\0"
    if "\0" not in text:
        return "m" + text
    return "b" + base64.b64encode(payload).decode("ascii")


def decode_payload(text: str) -> bytes | None:
    tag = text[:1]
    if tag == "m":
        return text[1:].encode()
    if tag == "b":
        return base64.b64decode(text[1:])
    return None


class PostgresBus(NetworkBus):
    backend = "postgres"
    # The UTF-8 fast path: 1 tag byte + the payload must stay under the limit.
    max_payload = NOTIFY_LIMIT - 2

    def __init__(self, url: str, *, schema: str = "public",
                 application_name: str = "roost-bus", limits: BusLimits | None = None) -> None:
        super().__init__(limits)
        self._url = url
        self._schema = schema
        self._settings = {"application_name": application_name}
        self._wire_of: dict[str, str] = {}  # channel -> wire name (while subscribed)
        self._channel_of: dict[str, str] = {}  # wire name -> channel
        self._wconn: asyncpg.Connection | None = None
        self._lconn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self._url, timeout=self.limits.connect_timeout_s,
                                     server_settings=self._settings)

    async def _disconnect(self, conn: asyncpg.Connection | None) -> None:
        if conn is None or conn.is_closed():
            return
        try:
            await conn.close(timeout=self.limits.connect_timeout_s)
        except Exception:  # a broken connection: closing it gracefully cannot work
            conn.terminate()

    # -- writer ---------------------------------------------------------------------------

    async def _connect_writer(self) -> None:
        self._wconn = await self._connect()

    async def _disconnect_writer(self) -> None:
        conn, self._wconn = self._wconn, None
        await self._disconnect(conn)

    async def _write(self, batch: Batch) -> None:
        conn = self._wconn
        assert conn is not None
        schema = self._schema
        channels: list[str] = []
        texts: list[str] = []
        seen: set[tuple[str, str]] = set()
        for channel, payload in batch:
            text = encode_payload(payload)
            if len(text) >= NOTIFY_LIMIT // 4 and len(text.encode()) >= NOTIFY_LIMIT:
                text = "g"  # too big (base64 grew it past the limit): subscribers re-read
                self._hub.dropped += 1
            wire = wire_channel(schema, channel)
            if (wire, text) in seen:  # PostgreSQL would fold it into the earlier one
                await conn.execute(_NOTIFY, channels, texts)
                channels, texts, seen = [], [], set()
            channels.append(wire)
            texts.append(text)
            seen.add((wire, text))
        await conn.execute(_NOTIFY, channels, texts)

    def _retryable(self, exc: Exception) -> bool:
        # An error the server answered (bad encoding, ...) will recur; the loss of the
        # connection, a shutdown or too many connections will not.
        return not isinstance(exc, asyncpg.PostgresError) or isinstance(exc, _TRANSIENT)

    # -- listener -------------------------------------------------------------------------

    async def _connect_listener(self) -> None:
        self._lost = lost = asyncio.Event()
        conn = await self._connect()
        conn.add_termination_listener(lambda _conn: lost.set())
        self._lconn = conn

    async def _disconnect_listener(self) -> None:
        conn, self._lconn = self._lconn, None
        await self._disconnect(conn)

    async def _abort_listener(self) -> None:
        if self._lconn is not None:
            self._lconn.terminate()
        self._lost.set()

    async def _listen_on(self, channels: list[str]) -> None:
        conn = self._lconn
        assert conn is not None
        for channel in channels:
            wire = self._wire_of.get(channel) or wire_channel(self._schema, channel)
            self._wire_of[channel] = wire
            self._channel_of[wire] = channel
            await conn.add_listener(wire, self._on_notify)

    async def _unlisten(self, channel: str) -> None:
        conn = self._lconn
        assert conn is not None
        wire = self._wire_of.pop(channel, None)
        if wire is not None:
            self._channel_of.pop(wire, None)
            await conn.remove_listener(wire, self._on_notify)

    def _on_notify(self, _conn: Any, _pid: int, wire: str, text: str) -> None:
        channel = self._channel_of.get(wire)
        if channel is not None:
            self._hub.dispatch(channel, decode_payload(text))

    async def _run_listener(self) -> None:
        conn = self._lconn
        assert conn is not None
        interval = self.limits.health_check_s
        while not self._lost.is_set():
            try:
                async with asyncio.timeout(interval):
                    await self._lost.wait()
            except TimeoutError:
                async with self._lock, asyncio.timeout(self.limits.connect_timeout_s):
                    await conn.execute("SELECT 1")
