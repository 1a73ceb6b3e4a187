"""Server-sent events for a run: `id: <seq>`, `event: <type>`, `data: <json>`, heartbeats.

The response is plain ASGI: one task writes frames (the only writer, so frames never
interleave), another listens for the client going away; whichever finishes first cancels the
other (starlette's StreamingResponse does the same). A reader that lags behind the run's
buffer continues from the persisted log, then rejoins the live tail.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import msgspec
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from roost.runtime.bus import ChannelLagged
from roost.runtime.runtime import RunHandle
from roost.sessions.records import RUN_END_EVENTS, TERMINAL_STATUSES, Event

#: reads a run's persisted events after a seq (oldest first), for a reader that lagged
Replay = Callable[[int], Awaitable[list[Event]]]

_encode = msgspec.json.Encoder().encode
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
           (b"x-accel-buffering", b"no")]


def frame(event: Event) -> bytes:
    head = f"id: {event.seq}\nevent: {event.type}\n".encode() if event.seq else (
        f"event: {event.type}\n".encode())
    payload = {"seq": event.seq, "type": event.type, "run_id": event.run_id, "data": event.data,
               "ts": event.ts}
    return head + b"data: " + _encode(payload) + b"\n\n"


class SSEResponse(Response):
    """An event stream as plain ASGI: one task writes (the only writer, so frames never
    interleave), another listens for the client going away; whichever finishes first cancels
    the other, as starlette's StreamingResponse does. A Response subclass so FastAPI passes
    it through untouched. Subclasses write the body (`_write`) and may act when the client
    leaves first (`client_left`)."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = HEADERS + [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                      for k, v in (headers or {}).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        writer = asyncio.ensure_future(self._write(send))
        listener = asyncio.ensure_future(wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait((writer, listener), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (writer, listener):
                task.cancel()
            await asyncio.gather(writer, listener, return_exceptions=True)
        if listener in done:
            self.client_left()
        if writer in done and not writer.cancelled() and writer.exception() is None:
            with contextlib.suppress(OSError, RuntimeError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _write(self, send: Send) -> None:
        raise NotImplementedError

    def client_left(self) -> None:
        """The client went away before the body ended."""


class FrameStream(SSEResponse):
    """Server-sent events from an async iterator of ready frames; `on_disconnect` runs when
    the client left before the frames ended."""

    def __init__(self, frames: AsyncIterator[bytes], *, headers: dict[str, str] | None = None,
                 on_disconnect: Callable[[], None] | None = None) -> None:
        super().__init__(headers)
        self.frames = frames
        self.on_disconnect = on_disconnect

    async def _write(self, send: Send) -> None:
        async for chunk in self.frames:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

    def client_left(self) -> None:
        if self.on_disconnect is not None:
            self.on_disconnect()


def follower_stream(batches: AsyncGenerator[list[Event], None],
                    headers: dict[str, str] | None = None) -> FrameStream:
    """A run driven by another instance (or already ended): `Runtime.follow`'s persisted
    events, then the live tail, to the run's end; an empty batch is a heartbeat."""
    return FrameStream(_follower_frames(batches), headers=headers)


async def _follower_frames(batches: AsyncGenerator[list[Event], None]) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(batches):
        async for batch in batches:
            yield b"".join(frame(e) for e in batch) if batch else b": heartbeat\n\n"


class RunEventStream(SSEResponse):
    """ASGI response streaming one run's events until it ends or the client leaves.

    `on_disconnect(handle)` is called when the client goes away before the run ended (the
    agent's disconnect policy decides what it does)."""

    def __init__(self, handle: RunHandle, replay: Replay, *, heartbeat_s: float,
                 after_seq: int = 0, on_disconnect: Callable[[RunHandle], None] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(headers)
        self.handle = handle
        self.replay = replay
        self.heartbeat_s = heartbeat_s
        self.after_seq = after_seq
        self.on_disconnect = on_disconnect

    def client_left(self) -> None:
        if not self.handle.done.done() and self.on_disconnect:
            self.on_disconnect(self.handle)

    async def _write(self, send: Send) -> None:
        after = self.after_seq
        run = self.handle.run
        while True:
            try:
                async for batch in self.handle.channel.batches(after_seq=after,
                                                               idle_s=self.heartbeat_s):
                    if not batch:
                        await send(_HEARTBEAT)
                        continue
                    # Everything published since the last write goes out in one write.
                    frames = []
                    ended = False
                    for event in batch:
                        frames.append(frame(event))
                        if event.seq:
                            after = event.seq
                        if event.type in RUN_END_EVENTS and event.run_id == run.id:
                            ended = True
                            break
                    await send({"type": "http.response.body", "body": b"".join(frames),
                                "more_body": True})
                    if ended:
                        return
                return
            except ChannelLagged as lag:
                # Too slow for the live buffer: replay the log, then rejoin the tail.
                after = lag.last_seq
                while events := await self.replay(after):
                    after = events[-1].seq
                    await send({"type": "http.response.body",
                                "body": b"".join(frame(e) for e in events), "more_body": True})
                if run.status in TERMINAL_STATUSES and self.handle.done.done():
                    return


_HEARTBEAT = {"type": "http.response.body", "body": b": heartbeat\n\n", "more_body": True}


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass
