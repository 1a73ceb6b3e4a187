"""Deciding a waiting run: a person's approval, rejection, edited arguments or answer — or
the timeout's outcome — and the run's resumption, on whichever instance receives it.

A waiting run holds nothing: no admission slot, no session lease, no task, no memory here.
Its record (status `waiting`, no owner, `lease_expires_at` = the wait's deadline) and its log
(`approval.required` per call, then `run.waiting` with the pending calls) are all there is.

The order of a decision, every step safe against a concurrent one on another instance:

1. Read the record and the log's newest events; the run must be `waiting`, its `run.waiting`
   must be the session's last event (a later turn on the session supersedes the wait: the
   run is closed), and the decisions must name pending calls and validate (422, naming
   the field) — all before anything is written.
2. Claim the run (`claim_run(..., statuses=("waiting",))`): one claimant of any number
   wins; the others get 409.
3. Append the decisions (`approval.decided`, one per call) with the record in one append.
4. Resume from the log, exactly like a takeover (`Recovery._start`): the run holds a slot
   and the session lease again, the decided calls run (or read their rejection or answer),
   and the run goes on.

If anything fails between 2 and 4, the claim is given back: the record is `waiting` again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import pydantic

from roost.engine.approval import Decision
from roost.engine.compaction import resume_context
from roost.errors import Conflict, InvalidInput, RoostError, SessionMoved
from roost.runtime.handle import RunHandle
from roost.runtime.recovery import RESUME_TAIL_EVENTS, restored_state
from roost.sessions.records import Event, RunRecord, now
from roost.tools.base import Tool
from roost.tools.function import FunctionTool

if TYPE_CHECKING:
    from roost.runtime.runtime import Runtime

log = logging.getLogger("roost.runtime")


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    """One decision as a client sends it. `call_id` may be omitted when one call waits."""

    decision: str | None = None  # None with an `answer`: "answer"
    call_id: str | None = None
    reason: str | None = None
    arguments: dict[str, Any] | None = None
    answer: str | None = None


class Approvals:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.decided = 0
        self.expired = 0

    async def decide(self, tenant: str, run_id: str,
                     requests: Sequence[DecisionRequest]) -> RunHandle:
        """Apply a person's decisions to a waiting run and resume it here."""
        rt = self.runtime
        run = await rt.store.get_run(tenant, run_id)
        waiting, tail = await self._waiting_event(run)
        hosted = rt.agents.hosted(run.agent)
        decisions = _validate(requests, waiting.data.get("pending") or [], hosted.tools)
        handle = await self._claim_and_resume(run, waiting, tail, decisions)
        self.decided += 1
        return handle

    async def expire(self, run: RunRecord) -> None:
        """The wait passed its deadline: apply the policy's outcome to every pending call.
        Called by the takeover scan on every instance; the claim makes it happen once."""
        waiting, tail = await self._waiting_event(run)
        outcome = waiting.data.get("on_timeout", "reject")
        decisions: dict[str, Decision] = {}
        for pending in waiting.data.get("pending") or []:
            if outcome == "approve":
                decision = (Decision("answer", answer="", by="timeout")
                            if pending.get("kind") == "question"
                            else Decision("approve", by="timeout"))
            else:
                decision = Decision("reject", reason="nobody decided in time", by="timeout")
            decisions[pending["call_id"]] = decision
        await self._claim_and_resume(run, waiting, tail, decisions)
        self.expired += 1
        log.info("run %s: its wait expired (%s)", run.id, outcome)

    async def cancel(self, run: RunRecord) -> RunRecord:
        """Cancel a waiting run (nobody runs it, so nobody else can): claim it like a
        decision would, then record its end (`run.cancelled`) in its log."""
        rt = self.runtime
        waiting, tail = await self._waiting_event(run)
        claimed = await rt.store.claim_run(run.tenant, run.id, rt.instance_id, rt.leases.ttl,
                                           statuses=("waiting",))
        if claimed is None:
            raise Conflict(f"run {run.id} was decided already", run_id=run.id)
        try:
            live = await rt.sessions.get(claimed.tenant, claimed.session_id,
                                         rt.agents.policies_of)
            await live.reload()
            if live.session.last_seq != tail[-1].seq:
                raise SessionMoved(f"session {live.id} moved on while run {run.id} waited")
            claimed.status = "cancelled"
            claimed.error = {"type": "cancelled", "reason": "user"}
            claimed.disown()
            await live.append([Event(type="run.cancelled", run_id=run.id,
                                     data={"error": claimed.error,
                                           "usage": claimed.usage_data()})], run=claimed)
        except BaseException:
            await self._give_back(claimed, waiting)
            raise
        return claimed

    # -- steps ----------------------------------------------------------------------------
    async def _waiting_event(self, run: RunRecord) -> tuple[Event, list[Event]]:
        """The run's `run.waiting` event and the session's newest events; `Conflict` when
        the run is not waiting or its session moved on (the run is then closed)."""
        rt = self.runtime
        if run.status != "waiting":
            raise Conflict(f"run {run.id} is {run.status}, not waiting for a decision",
                           run_id=run.id)
        tail = await rt.store.tail_events(run.tenant, run.session_id, RESUME_TAIL_EVENTS)
        # The log ends in the run's run.waiting, or after it in decisions of an attempt to
        # resume that failed (given back): those count, and newer ones override them.
        at = next((i for i in range(len(tail) - 1, -1, -1)
                   if tail[i].run_id == run.id and tail[i].type == "run.waiting"), None)
        if at is None or any(e.run_id != run.id or e.type != "approval.decided"
                             for e in tail[at + 1:]):
            await self._supersede(run)
            raise Conflict(f"run {run.id} can no longer resume: its session moved on",
                           run_id=run.id)
        return tail[at], tail

    async def _claim_and_resume(self, run: RunRecord, waiting: Event, tail: list[Event],
                                decisions: dict[str, Decision]) -> RunHandle:
        rt = self.runtime
        claimed = await rt.store.claim_run(run.tenant, run.id, rt.instance_id, rt.leases.ttl,
                                           statuses=("waiting",))
        if claimed is None:
            raise Conflict(f"run {run.id} was decided already", run_id=run.id)
        try:
            live = await rt.sessions.get(claimed.tenant, claimed.session_id,
                                         rt.agents.policies_of)
            await live.reload()
            if live.session.last_seq != tail[-1].seq:
                raise SessionMoved(f"session {live.id} moved on while run {run.id} waited")
            hosted = rt.agents.hosted(live.session.agent)
            events = [Event(type="approval.decided", run_id=run.id,
                            data=decision.event_data(call_id))
                      for call_id, decision in decisions.items()]
            await live.append(events, run=claimed)
            tail = [*tail, *events]
            first = await rt.read_run_events(claimed.tenant, claimed, limit=10)
            # A run resumed after a wait continues its conversation where it paused.
            return rt.recovery._start(claimed, hosted, live, resume_context(tail, run.id),
                                      **restored_state(first, tail, run.id))
        except BaseException:
            await self._give_back(claimed, waiting)
            raise

    async def _give_back(self, run: RunRecord, waiting: Event) -> None:
        """Undo a claim: the run waits again, until the same deadline."""
        run.status = "waiting"
        run.disown()
        run.lease_expires_at = waiting.data.get("expires_at")
        run.attempt = max(1, run.attempt - 1)
        try:
            await self.runtime.store.put_run(run)
        except RoostError as exc:
            log.warning("run %s: could not give back its claim: %s", run.id, exc)

    async def _supersede(self, run: RunRecord) -> None:
        """A later turn moved the session on: the waiting run ends, cancelled."""
        run.status = "cancelled"
        run.error = {"type": "superseded",
                     "message": "a later turn on the session superseded the wait"}
        run.disown()
        run.updated_at = now()
        try:
            await self.runtime.store.put_run(run)
        except RoostError as exc:
            log.warning("run %s: could not close it: %s", run.id, exc)

    def statistics(self) -> dict[str, int]:
        return {"decided": self.decided, "expired": self.expired}


def _validate(requests: Sequence[DecisionRequest], pending: list[dict[str, Any]],
              tools: dict[str, Tool]) -> dict[str, Decision]:
    """Each request as a `Decision` for a pending call; `InvalidInput` naming the field."""
    by_id = {p["call_id"]: p for p in pending}
    if not requests:
        raise InvalidInput("no decision given", field="decisions")
    decisions: dict[str, Decision] = {}
    for i, request in enumerate(requests):
        where = f"decisions[{i}]." if len(requests) > 1 else ""
        call_id = request.call_id
        if call_id is None:
            if len(by_id) != 1:
                raise InvalidInput(f"{len(by_id)} calls wait: name one with call_id",
                                   field=f"{where}call_id")
            call_id = next(iter(by_id))
        call = by_id.get(call_id)
        if call is None:
            raise InvalidInput(f"no call {call_id!r} waits for a decision",
                               field=f"{where}call_id")
        if call_id in decisions:
            raise InvalidInput(f"two decisions for call {call_id!r}", field=f"{where}call_id")
        kind = call.get("kind", "approval")
        if request.decision is None and request.answer is None:
            raise InvalidInput("decision is required (approve, reject or answer)",
                               field=f"{where}decision")
        if request.decision == "answer" or (request.decision is None):
            if kind != "question":
                raise InvalidInput(f"call {call_id!r} asks for approval, not an answer",
                                   field=f"{where}decision")
            if request.answer is None:
                raise InvalidInput("an answer needs `answer`", field=f"{where}answer")
            decisions[call_id] = Decision("answer", answer=request.answer)
        elif request.decision == "reject":
            decisions[call_id] = Decision("reject", reason=request.reason)
        elif request.decision == "approve":
            if kind == "question":
                raise InvalidInput(f"call {call_id!r} is a question: send an answer",
                                   field=f"{where}answer")
            arguments = None
            if request.arguments is not None:
                arguments = _edited_arguments(tools.get(call["name"]), request.arguments,
                                              f"{where}arguments")
            decisions[call_id] = Decision("approve", arguments=arguments, reason=request.reason)
        else:
            raise InvalidInput("decision must be approve, reject or answer",
                               field=f"{where}decision")
    missing = set(by_id) - set(decisions)
    if missing:
        raise InvalidInput(f"every waiting call needs a decision; missing {sorted(missing)}",
                           field="decisions")
    return decisions


def _edited_arguments(tool: Tool | None, arguments: dict[str, Any], field: str) -> str:
    """Edited arguments as JSON text, validated against the tool's schema."""
    if isinstance(tool, FunctionTool):
        try:
            tool.arguments_model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in error["loc"])
            raise InvalidInput(f"{field}.{loc}: {error['msg']}" if loc else error["msg"],
                               field=f"{field}.{loc}" if loc else field) from None
    return orjson.dumps(arguments).decode()
