"""Human in the loop: which tool calls wait for a person, and what the person decided.

A call waits for a person, before it runs, when

1. its tool asks the user a question (the `ask_user` built-in: `asks_user = True`) — the
   person's answer becomes the tool's result; or
2. its tool requires approval (`@tool(requires_approval=True)`); or
3. the agent's `ApprovalPolicy` names the tool, always or when a predicate on the call's
   arguments holds (`[agents.NAME.policies.approval]` in roost.toml).

A call with a recorded decision never waits again: approve runs it (with the person's edited
arguments when given), reject makes the person's reason its result, answer makes the answer
its result. Decisions are `approval.decided` events in the log, so a resumed run — on any
instance, after any restart — finds them there.

The runtime builds an `ApprovalGate` only for agents with such a tool or policy: every other
run pays nothing for approvals (`RunContext.gate is None`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from roost.models.base import ToolCall
from roost.sessions.records import Event

Predicate = Callable[[dict[str, Any]], bool]
DecisionKind = Literal["approve", "reject", "answer"]
TimeoutOutcome = Literal["reject", "approve"]

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge,
    "<": operator.lt, "<=": operator.le, "in": lambda a, b: a in b,
    "contains": lambda a, b: b in a,
}


@dataclass(frozen=True, slots=True)
class Condition:
    """A predicate written in config: `{arg = "amount", op = ">", value = 100}`.

    A missing argument or a comparison that cannot be made counts as true: when in doubt,
    a person looks at the call."""

    arg: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"approval condition op {self.op!r} is not one of {sorted(_OPS)}")

    def __call__(self, arguments: dict[str, Any]) -> bool:
        if self.arg not in arguments:
            return True
        try:
            return bool(_OPS[self.op](arguments[self.arg], self.value))
        except TypeError:
            return True


@dataclass(frozen=True, slots=True)
class AllOf:
    """Every condition holds (a config rule's `when` list)."""

    conditions: tuple[Predicate, ...]

    def __call__(self, arguments: dict[str, Any]) -> bool:
        return all(c(arguments) for c in self.conditions)


@dataclass(frozen=True, slots=True)
class ApprovalPolicy:
    """Which calls of an agent need a person, how long a person has, and what happens then.

        Agent(..., policies=Policies(approval=ApprovalPolicy(
            tools={"transfer": lambda args: args["amount"] > 100, "delete_repo": True},
            timeout_s=3600, on_timeout="reject")))

    `timeout_s` and `on_timeout` also apply to tools that require approval themselves and
    to `ask_user` questions (an unanswered question times out as a rejection or, with
    `approve`, as an empty answer)."""

    tools: Mapping[str, bool | Predicate] = field(default_factory=dict)
    timeout_s: float = 86_400.0
    on_timeout: TimeoutOutcome = "reject"

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError("policies.approval.timeout_s must be > 0")
        if self.on_timeout not in ("reject", "approve"):
            raise ValueError("policies.approval.on_timeout must be 'reject' or 'approve'")

    def describe(self) -> dict[str, Any]:
        """The policy as JSON can say it (a Python predicate is `"predicate"`)."""
        return {"timeout_s": self.timeout_s, "on_timeout": self.on_timeout,
                "tools": {name: rule if isinstance(rule, (bool, AllOf)) else "predicate"
                          for name, rule in self.tools.items()}}

    @classmethod
    def from_config(cls, value: object) -> ApprovalPolicy | None:
        """`None`, a policy, or its config table:

            timeout_s = 600
            on_timeout = "reject"
            tools = ["delete_file"]                                   # always
            # or: [agents.NAME.policies.approval.tools]
            #     delete_file = true
            #     transfer = { when = [{ arg = "amount", op = ">", value = 100 }] }
        """
        if value is None or isinstance(value, ApprovalPolicy):
            return value
        if not isinstance(value, Mapping):
            raise ValueError("policies.approval must be a table")
        table = dict(value)
        tools_value = table.pop("tools", {})
        tools: dict[str, bool | Predicate] = {}
        if isinstance(tools_value, list):
            tools = {str(name): True for name in tools_value}
        elif isinstance(tools_value, Mapping):
            for name, rule in tools_value.items():
                tools[str(name)] = _rule_from_config(str(name), rule)
        else:
            raise ValueError("policies.approval.tools must be a list or a table")
        unknown = set(table) - {"timeout_s", "on_timeout"}
        if unknown:
            raise ValueError(f"policies.approval: unknown keys {sorted(unknown)}")
        return cls(tools=tools, **table)


def _rule_from_config(name: str, rule: object) -> bool | Predicate:
    if isinstance(rule, bool) or callable(rule):
        return rule
    if isinstance(rule, Mapping) and set(rule) == {"when"} and isinstance(rule["when"], list):
        try:
            return AllOf(tuple(Condition(**c) for c in rule["when"]))
        except TypeError:
            pass
    raise ValueError(f"policies.approval.tools.{name} must be true, false or "
                     "{ when = [{ arg = …, op = …, value = … }] }")


@dataclass(frozen=True, slots=True)
class Decision:
    """What a person (or the timeout) decided about one waiting call."""

    decision: DecisionKind
    reason: str | None = None
    arguments: str | None = None  # edited arguments, JSON text
    answer: str | None = None
    by: str = "api"  # "api" or "timeout"

    def event_data(self, call_id: str) -> dict[str, Any]:
        data: dict[str, Any] = {"call_id": call_id, "decision": self.decision, "by": self.by}
        for name in ("reason", "arguments", "answer"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data

    @classmethod
    def from_event(cls, data: dict[str, Any]) -> Decision:
        return cls(decision=data["decision"], reason=data.get("reason"),
                   arguments=data.get("arguments"), answer=data.get("answer"),
                   by=data.get("by", "api"))

    def result(self) -> tuple[str, str] | None:
        """The tool result this decision stands for, or None when the call should run."""
        if self.decision == "reject":
            reason = self.reason or "no reason given"
            return f"Rejected by a person: {reason}", "rejected"
        if self.decision == "answer":
            return self.answer or "", "ok"
        return None


def decisions_from(events: Iterable[Event], run_id: str) -> dict[str, Decision]:
    """The decisions a run's log holds, by call id (the newest wins)."""
    return {e.data["call_id"]: Decision.from_event(e.data) for e in events
            if e.type == "approval.decided" and e.run_id == run_id}


class ApprovalGate:
    """One run's view: the agent's rules and the decisions recorded so far."""

    __slots__ = ("decisions", "policy", "questions", "rules")

    def __init__(self, rules: Mapping[str, bool | Predicate], questions: frozenset[str],
                 policy: ApprovalPolicy, decisions: dict[str, Decision] | None = None) -> None:
        self.rules = rules
        self.questions = questions
        self.policy = policy
        self.decisions = decisions if decisions is not None else {}

    def pending(self, calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
        """The calls of a step that must wait for a person: undecided and gated."""
        held: list[dict[str, Any]] = []
        for call in calls:
            if call.id in self.decisions:
                continue
            if call.name in self.questions:
                args = _arguments(call)
                held.append({"call_id": call.id, "name": call.name, "arguments": call.arguments,
                             "kind": "question", "question": str(args.get("question", ""))})
            elif self._gated(call):
                held.append({"call_id": call.id, "name": call.name, "arguments": call.arguments,
                             "kind": "approval"})
        return held

    def _gated(self, call: ToolCall) -> bool:
        rule = self.rules.get(call.name)
        if rule is None or rule is False:
            return False
        if rule is True:
            return True
        try:
            return bool(rule(_arguments(call)))
        except Exception:  # a predicate that fails asks a person rather than letting it pass
            return True


def _arguments(call: ToolCall) -> dict[str, Any]:
    try:
        parsed = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def build_gate(tools: Iterable[Any], policy: ApprovalPolicy | None) -> ApprovalGate | None:
    """The agent's gate (without decisions), or None when no call of it can wait."""
    rules: dict[str, bool | Predicate] = {}
    questions: set[str] = set()
    for tool in tools:
        if getattr(tool, "asks_user", False):
            questions.add(tool.name)
        elif getattr(tool, "requires_approval", False):
            rules[tool.name] = True
    if policy is not None:
        for name, rule in policy.tools.items():
            if rules.get(name) is not True:
                rules[name] = rule
    if not rules and not questions:
        return None
    return ApprovalGate(rules, frozenset(questions), policy or ApprovalPolicy())


def with_decisions(gate: ApprovalGate | None,
                   decisions: dict[str, Decision] | None) -> ApprovalGate | None:
    """A run's own gate: the agent's rules with this run's decisions."""
    if gate is None:
        return None
    return ApprovalGate(gate.rules, gate.questions, gate.policy, dict(decisions or {}))
