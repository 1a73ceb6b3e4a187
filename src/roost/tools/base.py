"""The `Tool` and `Toolset` protocols and the context a tool call sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from roost.sessions.artifacts import ArtifactRef, ArtifactStore


@dataclass(slots=True)
class ToolContext:
    """What a tool may know about the call it serves.

    `idempotency_key` (`run_id:call_id`) is stable across a resumed run: the engine guarantees
    at-least-once execution and exactly-once recording, so a tool with side effects can use it
    to make them exactly-once.
    """

    run_id: str
    session_id: str
    tenant: str
    agent: str
    call_id: str
    # Absolute deadline on the event loop clock, or None.
    deadline: float | None = None
    # The session state at the start of the run (read-only by convention).
    state: dict[str, Any] = field(default_factory=dict)
    # Where `keep` stores payloads that do not belong in the model's context.
    artifacts: ArtifactStore | None = None
    # The refs `keep` stored during this call: the engine records them on the tool.result.
    kept: list[dict[str, Any]] = field(default_factory=list)
    # Size of the agent's thread pool for sync tools (`Limits.tool_threads`).
    tool_threads: int = 4

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.call_id}"

    async def keep(self, data: bytes, media_type: str) -> ArtifactRef | None:
        """Store `data` as an artifact of the call's tenant and record its ref on the call's
        result; None when the run has no artifact store. The store's errors propagate
        (`InvalidInput` over its size limit, `StoreUnavailable`): the caller says what the
        model reads instead."""
        if self.artifacts is None:
            return None
        ref = await self.artifacts.put(self.tenant, data, media_type)
        self.kept.append(ref.to_dict())
        return ref


class ToolArgumentsError(Exception):
    """The model's arguments did not validate; the message is shown to the model."""


@runtime_checkable
class Tool(Protocol):
    """Something the model can call: a name, a JSON schema, and `call(arguments, ctx)`."""

    name: str
    description: str
    #: JSON schema of the arguments object
    parameters: dict[str, Any]
    #: per-call timeout in seconds; None means the agent's default
    timeout_s: float | None

    async def call(self, arguments: str, ctx: ToolContext) -> str:
        """Validate the JSON `arguments`, run, and return the result as text for the model.

        Raises `ToolArgumentsError` for invalid arguments; any other exception is reported to
        the model as a tool error by the engine.
        """
        ...


@runtime_checkable
class Toolset(Protocol):
    """A source of tools resolved when a run starts (MCP servers, prefixed sets, …)."""

    async def list_tools(self) -> list[Tool]: ...
