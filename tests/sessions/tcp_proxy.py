"""A tiny asyncio TCP proxy for outage tests: put it between a client and a real server.

    async with TcpProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        ...
        await proxy.cut()       # drop every connection, refuse new ones (server down)
        await proxy.stall()     # accept and keep connections, forward nothing (network hang)
        await proxy.lose_replies()  # requests reach the server, its replies never come back
        await proxy.restore()   # back to forwarding, same port

Every task it starts (one per connection, two pumps inside it) is tracked and cancelled by
`close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any


class TcpProxy:
    """Forward 127.0.0.1:`port` to `target_host`:`target_port`, with faults on demand."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0  # chosen by the OS on the first start, kept across restores
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._replying = asyncio.Event()  # the server → client direction
        self._replying.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: connections accepted so far (tests use it to see that a client reconnected)
        self.accepted = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Like a crashed server: close the listener, reset every open connection."""
        await self._stop_listening()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        self._flowing.set()  # let stalled pumps see their dead sockets and finish
        self._replying.set()

    async def stall(self) -> None:
        """Like a network black hole: connections stay open, no byte gets through."""
        self._flowing.clear()

    async def lose_replies(self) -> None:
        """Like an acknowledgement lost in the network: what the client sends reaches the
        server (and commits), what the server answers is held back."""
        self._replying.clear()

    async def restore(self) -> None:
        """Forward again; start listening on the same port if `cut` closed it."""
        self._flowing.set()
        self._replying.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        self._writers.add(writer)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                writer.transport.abort()
                return
            self._writers.add(up_writer)
            # Either side closing (or a cut) ends both directions.
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, writer, self._replying)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
                for w in (writer, up_writer):
                    self._writers.discard(w)
                    w.transport.abort()
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    gate: asyncio.Event | None = None) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if gate is not None:
                    await gate.wait()
                if writer.transport.is_closing():
                    return
                writer.write(data)
                await writer.drain()
