"""Real HTTP against a real uvicorn: a `serve` factory, a cross-thread latch, an SSE reader.

Each test builds the agents it needs (the bundled examples on the `demo` model, or agents on a
`ScriptedModel` for precise control) and serves them with `serve(...)` on a free loopback
port. The server runs its own event loop in a thread (`LiveServer`), so tests talk to it the
way a client would: over HTTP only, plus a read-only look at the runtime where HTTP cannot
show a fact (e.g. "the second turn has been admitted").

A run that must be caught mid-way parks in the `hold` tool (`Hold`) until the test releases
it: no timing guesses, no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
import pytest

from roost import Agent, Runtime, Settings
from roost.loader import load_agents
from roost.testing.live import LiveServer
from roost.tools import FunctionTool, ToolContext

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HAS_SQLITE = importlib.util.find_spec("roost.sessions.sqlite") is not None

#: Store backends the HTTP tests run against: `memory://` always, SQLite when it is built.
STORES = [
    "memory",
    pytest.param("sqlite", marks=pytest.mark.skipif(not HAS_SQLITE,
                                                      reason="roost.sessions.sqlite not built yet")),
]

WAIT_S = 10.0  # the longest any test waits for something that should happen at once


# -- a latch both event loops (the test's and the server's) can wait on -----------------------
class Latch:
    """Opens once, from any thread; waitable from any event loop or synchronously."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flag = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def is_open(self) -> bool:
        return self._flag.is_set()

    def open(self) -> None:
        with self._lock:
            self._flag.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            # The waiter's loop may already be gone (a test torn down); nothing to wake then.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)

    async def wait(self) -> None:
        """Wait until open (callers bound it with `asyncio.timeout`)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._flag.is_set():
                return
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        try:
            await future
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove((loop, future))

    def wait_sync(self, timeout: float = WAIT_S) -> None:
        if not self._flag.wait(timeout):
            raise TimeoutError("the latch did not open")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Hold:
    """An async tool (named `hold`) that parks its run until `release()`.

    `entered` opens when the first call starts; `cancelled` when a call is cancelled (the
    run's cancellation reached the tool); `run_ids` lists the runs that called it.
    """

    def __init__(self, name: str = "hold") -> None:
        self.entered = Latch()
        self.released = Latch()
        self.cancelled = Latch()
        self.run_ids: list[str] = []
        self.tool = FunctionTool(self._call, name=name,
                                 description="Wait until the test releases the run.")

    async def _call(self, ctx: ToolContext) -> str:
        self.run_ids.append(ctx.run_id)
        self.entered.open()
        try:
            await self.released.wait()
        except asyncio.CancelledError:
            self.cancelled.open()
            raise
        return "released"

    def release(self) -> None:
        self.released.open()


# -- serving ----------------------------------------------------------------------------------
class Serve(Protocol):
    def __call__(self, *agents: Agent, store: str = "memory", **settings: Any) -> LiveServer: ...


def example_agents() -> list[Agent]:
    """Fresh `weather` and `calculator` agents from examples/ (demo model)."""
    agents: list[Agent] = load_agents([str(EXAMPLES / "weather.py"),
                                       str(EXAMPLES / "calculator.py")])
    return agents


@contextlib.contextmanager
def serving(directory: Path) -> Iterator[Serve]:
    """A `Serve` factory whose servers (and SQLite files, in `directory`) live until exit.

    `store` is "memory" or "sqlite"; keyword arguments are Settings sections, merged over
    test defaults (no shutdown grace, so teardown never waits on a parked run).
    """
    counter = itertools.count()
    with contextlib.ExitStack() as stack:

        def start(*agents: Agent, store: str = "memory", **settings: Any) -> LiveServer:
            url = ("memory://" if store == "memory"
                   else f"sqlite:///{directory}/roost-{next(counter)}.db")
            server_section = {"shutdown_grace_s": 0.0, **settings.pop("server", {})}
            runtime = Runtime(Settings(store={"url": url}, server=server_section, **settings),
                              agents or example_agents())
            return stack.enter_context(LiveServer(runtime))

        yield start


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Servers for one test: use it when the test changes server-wide state or needs its
    own agents."""
    with serving(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The bundled examples (weather, calculator) on the demo model and a memory store,
    shared by a module's tests (each works in its own sessions; starting a server costs
    ~0.3 s)."""
    with serving(tmp_path_factory.mktemp("demo")) as start:
        yield start()


@pytest.fixture(scope="module", params=STORES)
def each_store(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The example agents served on each store backend, shared by a module's tests."""
    with serving(tmp_path_factory.mktemp("stores")) as start:
        yield start(*example_agents(), store=request.param)


@pytest.fixture
def http(each_store: LiveServer) -> Iterator[httpx.Client]:
    """A client of `each_store`: the test runs once per store backend."""
    with httpx.Client(base_url=each_store.url, timeout=WAIT_S) as client:
        yield client


@pytest.fixture
def client(demo: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo.url, timeout=WAIT_S) as http:
        yield http


# -- HTTP helpers -----------------------------------------------------------------------------
PROBLEM_JSON = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, type_: str | None = None,
                   field: str | None = None) -> dict[str, Any]:
    """`response` is an RFC 9457 problem with this status (and type/field when given)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:roost:problem:")
    assert body["title"] and body["detail"]
    if type_ is not None:
        assert body["type"] == f"urn:roost:problem:{type_}", body
    if field is not None:
        assert body.get("field") == field, body
    return body


def new_session(http: httpx.Client, agent: str, **body: Any) -> dict[str, Any]:
    response = http.post(f"/v1/agents/{agent}/sessions", json=body)
    assert response.status_code == 201, response.text
    session: dict[str, Any] = response.json()
    return session


async def anew_session(http: httpx.AsyncClient, agent: str, **body: Any) -> dict[str, Any]:
    response = await http.post(f"/v1/agents/{agent}/sessions", json=body)
    assert response.status_code == 201, response.text
    session: dict[str, Any] = response.json()
    return session


def session_events(http: httpx.Client, session_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/v1/sessions/{session_id}/events", params={"limit": 1000})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S,
               what: str = "condition") -> None:
    """For facts HTTP cannot signal (e.g. a second request reached the runtime): poll."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.005)


async def await_until(predicate: Callable[[], bool], what: str = "condition") -> None:
    """`wait_until` for async tests. The fact lives in the server's thread, which has no
    event the test's loop could await: poll it."""
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                if predicate():
                    return
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise TimeoutError(f"timed out waiting for {what}") from None


# -- server-sent events -----------------------------------------------------------------------
@dataclass
class Frame:
    """One SSE frame; a comment line (heartbeat) is a frame with only `comment` set."""

    event: str | None = None
    id: int | None = None
    data: dict[str, Any] | None = None
    comment: str | None = None
    raw: list[str] = field(default_factory=list)


class SSEParser:
    """Turn lines (without line endings) into frames, per the WHATWG event-stream format."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def feed(self, line: str) -> Frame | None:
        if line.startswith(":"):
            return Frame(comment=line[1:].strip(), raw=[line])
        if line:
            self._lines.append(line)
            return None
        if not self._lines:
            return None
        lines, self._lines = self._lines, []
        frame = Frame(raw=lines)
        data: list[str] = []
        for entry in lines:
            name, _, value = entry.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                frame.event = value
            elif name == "id":
                frame.id = int(value)
            elif name == "data":
                data.append(value)
        if data:
            frame.data = orjson.loads("\n".join(data))
        return frame


def frames(lines: Iterable[str]) -> Iterator[Frame]:
    parser = SSEParser()
    for line in lines:
        frame = parser.feed(line)
        if frame is not None:
            yield frame


async def aframes(response: httpx.Response) -> AsyncIterator[Frame]:
    parser = SSEParser()
    async for line in response.aiter_lines():
        frame = parser.feed(line)
        if frame is not None:
            yield frame


TERMINAL = frozenset({"run.completed", "run.failed", "run.cancelled", "run.interrupted"})


def follow_run(http: httpx.Client, run_id: str, after: int = 0) -> list[Frame]:
    """The run's frames from `GET /v1/runs/{id}/events` (replay, then the live tail) to its
    terminal event: how a client waits for a run it is not attached to."""
    headers = {"Last-Event-ID": str(after)} if after else {}
    out: list[Frame] = []
    with http.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        for frame in frames(response.iter_lines()):
            if frame.comment is not None:
                continue
            out.append(frame)
            if frame.event in TERMINAL:
                break
    return out
