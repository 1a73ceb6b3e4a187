"""Roost agents over A2A (`pip install 'roost[a2a]'`), on the official `a2a-sdk`'s JSON-RPC
binding; the client side is `roost.tools.a2a.A2AAgentTool`.

    GET  /a2a/{agent}/.well-known/agent-card.json     the agent's card
    POST /a2a/{agent}                                  JSON-RPC: SendMessage,
                                                       SendStreamingMessage, GetTask,
                                                       CancelTask, SubscribeToTask
    GET  /.well-known/agent-card.json                  the first agent's card, every
                                                       agent listed as a skill

    client = await a2a.client.create_client("http://127.0.0.1:8000/a2a/weather")

Mapping: an A2A **context** is a Roost session (`context_id` = session id; a message
without one starts a session), an A2A **task** is a Roost run (`task id` = run id). Every
call goes through the runtime (`create_session`, `submit_turn`, `get_run`, `cancel_run`,
the run's live channel): the same admission, deadlines and persistence as native turns,
and no task store of its own — `GetTask` reads the run record, on any instance. A run's
answer is the task's artifact `answer` and its final status message; streamed, the answer
arrives as artifact chunks while the model writes it. Refusals (overload, busy session,
unknown session) are A2A errors naming Roost's error type.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.request_handlers import RequestHandler
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes import create_jsonrpc_routes
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.types import a2a_pb2 as pb
from a2a.utils.errors import (
    InternalError,
    InvalidParamsError,
    TaskNotCancelableError,
    UnsupportedOperationError,
)
from starlette.requests import Request
from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Scope, Send

from roost.errors import Conflict, InvalidInput, NotFound, RoostError, RunNotFound
from roost.protocols.conversation import answer_deltas, text_deltas
from roost.protocols.wire import JSONResponse, tenant_of
from roost.runtime.runtime import RunHandle, Runtime
from roost.sessions.records import DEFAULT_TENANT, TERMINAL_STATUSES, RunRecord

log = logging.getLogger("roost.protocols.a2a")

CARD = "/.well-known/agent-card.json"
PREFIX = "/a2a/"
PROTOCOL_VERSION = "1.0"

_STATES = {"queued": pb.TASK_STATE_SUBMITTED, "running": pb.TASK_STATE_WORKING,
           "waiting": pb.TASK_STATE_WORKING, "completed": pb.TASK_STATE_COMPLETED,
           "failed": pb.TASK_STATE_FAILED, "timed_out": pb.TASK_STATE_FAILED,
           "cancelled": pb.TASK_STATE_CANCELED, "interrupted": pb.TASK_STATE_FAILED}


def agent_card(runtime: Runtime, name: str, base_url: str, *,
               all_skills: bool = False) -> pb.AgentCard:
    hosted = runtime.hosted(name)
    agents = runtime.agents.values() if all_skills else [hosted]
    return pb.AgentCard(
        name=name, description=hosted.agent.description or f"The Roost agent {name}.",
        version="1.0.0",
        supported_interfaces=[pb.AgentInterface(url=f"{base_url}{PREFIX}{name}",
                                                protocol_binding="JSONRPC",
                                                protocol_version=PROTOCOL_VERSION)],
        capabilities=pb.AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain"], default_output_modes=["text/plain"],
        skills=[pb.AgentSkill(id=h.name, name=h.name,
                              description=h.agent.description or f"The Roost agent {h.name}.",
                              tags=["roost"]) for h in agents])


def text_of(message: pb.Message) -> str:
    return "".join(part.text for part in message.parts if part.text)


def agent_message(run: RunRecord, text: str) -> pb.Message:
    return pb.Message(message_id=f"msg-{run.id}", context_id=run.session_id, task_id=run.id,
                      role=pb.ROLE_AGENT, parts=[pb.Part(text=text)])


def task_of(run: RunRecord, *, state: int | None = None,
            user: pb.Message | None = None) -> pb.Task:
    """A run as an A2A task: its status, the answer as artifact and status message."""
    state = _STATES.get(run.status, pb.TASK_STATE_WORKING) if state is None else state
    task = pb.Task(id=run.id, context_id=run.session_id)
    task.status.state = state  # type: ignore[assignment]
    task.status.timestamp.FromMilliseconds(int(run.updated_at * 1000))
    if user is None and run.input:
        user = pb.Message(message_id=f"in-{run.id}", context_id=run.session_id,
                          task_id=run.id, role=pb.ROLE_USER, parts=[pb.Part(text=run.input)])
    if user is not None:
        task.history.append(user)
    if state == pb.TASK_STATE_COMPLETED:
        answer = agent_message(run, run.output or "")
        task.status.message.CopyFrom(answer)
        task.history.append(answer)
        task.artifacts.append(pb.Artifact(artifact_id="answer", name="answer",
                                          parts=[pb.Part(text=run.output or "")]))
    elif run.error and state in (pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELED):
        task.status.message.CopyFrom(agent_message(
            run, f"{run.error.get('type', run.status)}: {run.error.get('message', '')}"))
    return task


def _a2a_error(exc: RoostError) -> Exception:
    message = f"{exc.type}: {exc.message}"
    if isinstance(exc, (NotFound, InvalidInput)):
        return InvalidParamsError(message=message)
    return InternalError(message=message)


class RoostRequestHandler(RequestHandler):
    """A2A requests onto the runtime; the agent comes from the endpoint's path."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _tenant(self, context: ServerCallContext) -> str:
        return str(context.state.get("tenant") or DEFAULT_TENANT)

    async def _submit(self, params: pb.SendMessageRequest, context: ServerCallContext,
                      *, stream: bool) -> RunHandle:
        runtime = self.runtime
        agent = str(context.state["agent"])
        tenant = self._tenant(context)
        text = text_of(params.message)
        try:
            runtime.hosted(agent)
            session_id = params.message.context_id
            if session_id:
                session = await runtime.get_session(tenant, session_id)
                if session.agent != agent:
                    raise InvalidInput(f"context {session_id} belongs to agent "
                                       f"{session.agent!r}", field="context_id")
            else:
                session_id = (await runtime.create_session(
                    tenant, agent, metadata={"protocol": "a2a"})).id
            return await runtime.submit_turn(tenant, session_id, text, stream=stream)
        except RoostError as exc:
            raise _a2a_error(exc) from None

    async def on_message_send(self, params: pb.SendMessageRequest,
                              context: ServerCallContext) -> pb.Task:
        handle = await self._submit(params, context, stream=False)
        if params.configuration.return_immediately:
            return task_of(handle.run, user=params.message)
        try:
            run = await handle.wait()
        except BaseException:
            handle.cancel("disconnect")
            raise
        return task_of(run, user=params.message)

    async def on_message_send_stream(self, params: pb.SendMessageRequest,
                                     context: ServerCallContext) -> AsyncGenerator[Any]:
        handle = await self._submit(params, context, stream=True)
        try:
            async for event in self._follow(handle.run, self._deltas(handle), handle.wait,
                                            params.message):
                yield event
        except BaseException:
            handle.cancel("disconnect")
            raise

    def _deltas(self, handle: RunHandle) -> AsyncGenerator[str, None]:
        return answer_deltas(handle, hold_steps=self._holds(handle.run))

    def _holds(self, run: RunRecord) -> bool:
        return bool(self.runtime.hosted(run.agent).tool_specs)

    async def _follow(self, run: RunRecord, deltas: AsyncIterator[str],
                      final: Callable[[], Awaitable[RunRecord]],
                      user: pb.Message | None) -> AsyncGenerator[Any]:
        """The task, `working`, the answer as artifact chunks, then the final status."""
        yield task_of(run, state=pb.TASK_STATE_SUBMITTED, user=user)
        yield pb.TaskStatusUpdateEvent(task_id=run.id, context_id=run.session_id,
                                       status=pb.TaskStatus(state=pb.TASK_STATE_WORKING))
        first = True
        async for text in deltas:
            yield pb.TaskArtifactUpdateEvent(
                task_id=run.id, context_id=run.session_id, append=not first,
                last_chunk=False,
                artifact=pb.Artifact(artifact_id="answer", name="answer",
                                     parts=[pb.Part(text=text)]))
            first = False
        run = await final()
        final_task = task_of(run)
        if run.status == "completed":
            yield pb.TaskArtifactUpdateEvent(
                task_id=run.id, context_id=run.session_id, append=not first, last_chunk=True,
                artifact=pb.Artifact(artifact_id="answer", name="answer",
                                     parts=[pb.Part(text="")]))
        yield pb.TaskStatusUpdateEvent(task_id=run.id, context_id=run.session_id,
                                       status=final_task.status)

    async def on_get_task(self, params: pb.GetTaskRequest,
                          context: ServerCallContext) -> pb.Task | None:
        run = await self._run(params.id, context)
        return task_of(run) if run is not None else None

    async def _run(self, task_id: str, context: ServerCallContext) -> RunRecord | None:
        try:
            run = await self.runtime.get_run(self._tenant(context), task_id)
        except RunNotFound:
            return None
        except RoostError as exc:
            raise _a2a_error(exc) from None
        return run if run.agent == context.state["agent"] else None

    async def on_cancel_task(self, params: pb.CancelTaskRequest,
                             context: ServerCallContext) -> pb.Task | None:
        if await self._run(params.id, context) is None:
            return None
        try:
            run = await self.runtime.cancel_run(self._tenant(context), params.id)
        except Conflict as exc:
            raise TaskNotCancelableError(message=exc.message) from None
        if run.status != "cancelled":
            raise TaskNotCancelableError(message=f"task {run.id} already ended {run.status}")
        return task_of(run)

    async def on_subscribe_to_task(self, params: pb.SubscribeToTaskRequest,
                                   context: ServerCallContext) -> AsyncGenerator[Any]:
        """Follow a task to its end, wherever its run is driven: here, from its live channel;
        on another instance, from the log and the fleet bus (`Runtime.follow`). A task that
        already ended is its record. Leaving a subscription never cancels the task."""
        run = await self._run(params.id, context)
        if run is None:
            raise InvalidParamsError(message=f"no task {params.id}")
        tenant = self._tenant(context)
        handle = self.runtime.live_run(tenant, params.id)
        if handle is not None:
            deltas = self._deltas(handle)
            final = handle.wait
        elif run.status in TERMINAL_STATUSES:
            yield task_of(run)
            return
        else:
            async def final() -> RunRecord:
                return await self.runtime.get_run(tenant, run.id)
            deltas = text_deltas(self.runtime.follow(run), final, hold_steps=self._holds(run))
        async with contextlib.aclosing(deltas):
            async for event in self._follow(run, deltas, final, None):
                yield event

    async def on_list_tasks(self, params: Any, context: ServerCallContext) -> Any:
        raise UnsupportedOperationError(message="listing tasks is not supported")

    async def on_create_task_push_notification_config(self, params: Any,
                                                       context: ServerCallContext) -> Any:
        raise UnsupportedOperationError(message="push notifications are not supported")

    async def on_get_task_push_notification_config(self, params: Any,
                                                    context: ServerCallContext) -> Any:
        raise UnsupportedOperationError(message="push notifications are not supported")

    async def on_list_task_push_notification_configs(self, params: Any,
                                                     context: ServerCallContext) -> Any:
        raise UnsupportedOperationError(message="push notifications are not supported")

    async def on_delete_task_push_notification_config(self, params: Any,
                                                      context: ServerCallContext) -> Any:
        raise UnsupportedOperationError(message="push notifications are not supported")

    async def on_get_extended_agent_card(self, params: Any, context: ServerCallContext) -> Any:
        raise UnsupportedOperationError(message="no extended agent card")


class _AgentContext(DefaultServerCallContextBuilder):
    """The agent (from the path) and the tenant (as the native routes decide it)."""

    def __init__(self, tenant_header: str | None) -> None:
        self.tenant_header = tenant_header.lower().encode("latin-1") if tenant_header else None

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state["agent"] = request.path_params["agent"]
        context.state["tenant"] = tenant_of(request.scope, dict(request.scope["headers"]),
                                            self.tenant_header)
        return context


class A2ARoutes:
    """ASGI middleware: the agent cards and `/a2a/{agent}` JSON-RPC; the rest to `app`."""

    def __init__(self, app: ASGIApp, runtime: Runtime, tenant_header: str | None) -> None:
        self.app = app
        self.runtime = runtime
        handler = RoostRequestHandler(runtime)
        self.rpc = Router(routes=create_jsonrpc_routes(
            handler, "/a2a/{agent}", context_builder=_AgentContext(tenant_header),
            enable_v0_3_compat=True))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith(PREFIX) or path == CARD):
            await self.app(scope, receive, send)
            return
        if path.endswith(CARD) and scope["method"] == "GET":
            scope["route"] = _ROOT_CARD if path == CARD else _AGENT_CARD
            name = path[len(PREFIX):-len(CARD)] if path != CARD else next(iter(self.runtime.agents), "")
            if name not in self.runtime.agents:
                await JSONResponse({"error": f"no agent named {name!r}"}, 404)(scope, receive, send)
                return
            card = agent_card(self.runtime, name, _base_url(scope), all_skills=path == CARD)
            await JSONResponse(agent_card_to_dict(card))(scope, receive, send)
            return
        name = path[len(PREFIX):].rstrip("/")
        if "/" in name or name not in self.runtime.agents:
            await JSONResponse({"error": f"no agent named {name!r}"}, 404)(scope, receive, send)
            return
        await self.rpc(scope, receive, send)


class _Route:
    """What `scope["route"]` holds for a card: the template observability labels it by."""

    def __init__(self, path: str) -> None:
        self.path = path


_ROOT_CARD = _Route(CARD)
_AGENT_CARD = _Route(PREFIX + "{agent}" + CARD)


def _base_url(scope: Scope) -> str:
    headers = dict(scope["headers"])
    host = headers.get(b"host", b"").decode("latin-1")
    if not host:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"
