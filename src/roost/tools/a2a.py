"""`A2AAgentTool`: a remote A2A agent as a tool (`pip install 'roost[a2a]'`).

    research = A2AAgentTool("https://agents.example.com/a2a/research")
    agent = Agent(name="helper", tools=[research])

The model calls it with `{"input": "..."}`; the answer is the remote task's text. The remote
agent card is read on the first call (its name and description become the tool's, unless
given). One Roost session talks to one remote context: a second call from the same session
continues the remote conversation. The call has the run's deadline (the engine's per-call
timeout) and its cancellation: a cancelled call cancels the remote task (`CancelTask`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections import OrderedDict
from typing import Any

import orjson

from roost.errors import ToolError
from roost.tools.base import ToolArgumentsError, ToolContext

try:
    import httpx
    from a2a.client import Client, ClientConfig, create_client
    from a2a.types import a2a_pb2 as pb
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("A2AAgentTool needs the A2A SDK: pip install 'roost[a2a]'") from exc

log = logging.getLogger("roost.tools.a2a")

_NAME = re.compile(r"[^a-zA-Z0-9_-]")
#: remote contexts remembered (Roost session → A2A context id), newest kept
MAX_CONTEXTS = 10_000
_FAILED = {pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELED, pb.TASK_STATE_REJECTED}


class A2AAgentTool:
    """A remote A2A agent as one tool: `A2AAgentTool(url, name=None, description=None)`."""

    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {"input": {"type": "string", "description": "The message to the agent."}},
        "required": ["input"],
    }

    def __init__(self, url: str, *, name: str | None = None, description: str | None = None,
                 timeout_s: float | None = None, headers: dict[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.name = name or _NAME.sub("_", self.url.rsplit("/", 1)[-1]) or "remote_agent"
        self.description = description or f"Ask the remote agent at {self.url}."
        self.timeout_s = timeout_s
        self.untrusted = True  # a remote agent's answer: the prompt-injection check reads it
        self.headers = dict(headers or {})
        self._client: Client | None = None
        self._http: httpx.AsyncClient | None = None
        self._connecting = asyncio.Lock()
        self._contexts: OrderedDict[str, str] = OrderedDict()

    async def _connect(self) -> Client:
        async with self._connecting:
            if self._client is None:
                self._http = httpx.AsyncClient(headers=self.headers, timeout=None)
                self._client = await create_client(
                    self.url, ClientConfig(streaming=True, httpx_client=self._http))
            return self._client

    async def call(self, arguments: str, ctx: ToolContext) -> str:
        try:
            parsed = orjson.loads(arguments or "{}")
        except orjson.JSONDecodeError as exc:
            raise ToolArgumentsError(f"arguments are not valid JSON: {exc}") from None
        text = parsed.get("input") if isinstance(parsed, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ToolArgumentsError("`input` must be a non-empty string")
        try:
            client = await self._connect()
        except Exception as exc:
            raise ToolError(f"A2A agent {self.url} is unreachable: {exc}") from None
        message = pb.Message(message_id=uuid.uuid4().hex, role=pb.ROLE_USER,
                             context_id=self._contexts.get(ctx.session_id, ""),
                             parts=[pb.Part(text=text)])
        task_id = ""
        chunks: list[str] = []
        final: pb.TaskStatus | None = None
        try:
            async for event in client.send_message(pb.SendMessageRequest(message=message)):
                if event.HasField("task"):
                    task_id = event.task.id
                    self._remember(ctx.session_id, event.task.context_id)
                    if event.task.status.state in (pb.TASK_STATE_COMPLETED, *_FAILED):
                        final = event.task.status
                        chunks = [p.text for a in event.task.artifacts for p in a.parts]
                elif event.HasField("artifact_update"):
                    chunks.extend(p.text for p in event.artifact_update.artifact.parts)
                elif event.HasField("status_update"):
                    final = event.status_update.status
                elif event.HasField("message"):
                    chunks.append("".join(p.text for p in event.message.parts))
        except asyncio.CancelledError:
            if task_id:
                await self._cancel_remote(client, task_id)
            raise
        except Exception as exc:
            raise ToolError(f"A2A agent {self.url} failed: {type(exc).__name__}: {exc}") from None
        if final is not None and final.state in _FAILED:
            reason = "".join(p.text for p in final.message.parts)
            raise ToolError(f"the remote task ended {pb.TaskState.Name(final.state)}: {reason}")
        return "".join(chunks)

    def _remember(self, session_id: str, context_id: str) -> None:
        if not context_id:
            return
        self._contexts[session_id] = context_id
        self._contexts.move_to_end(session_id)
        while len(self._contexts) > MAX_CONTEXTS:
            self._contexts.popitem(last=False)

    async def _cancel_remote(self, client: Client, task_id: str) -> None:
        """Cancel the remote task; bounded and shielded, the local cancellation goes on."""
        async def cancel() -> None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await client.cancel_task(pb.CancelTaskRequest(id=task_id))

        await asyncio.shield(asyncio.ensure_future(cancel()))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
