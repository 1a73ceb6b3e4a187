"""Fault injection for Roost's mock model servers: which request fails, and how.

Every mock server (OpenAI-compatible, Anthropic, ...) owns one `FaultInjector` and asks it,
once per model request, which `FaultMode` to play. What a mode *looks like on the wire*
(error body, SSE framing) is the server's business; *when* it happens is decided here, the
same way for every server, so a test or a benchmark reads the same on each of them.

    injector = FaultInjector()
    injector.set(FaultPlan("http_429", rate=0.5, count=10, retry_after_s=2, seed=7))
    mode = injector.pick(request.headers.get(FAULT_HEADER))   # "http_429" or "none"

The modes:

    none              answer normally
    http_500          HTTP 500 with a provider-shaped error body
    http_503          HTTP 503, same
    http_429          HTTP 429 with `Retry-After: <retry_after_s>`
    timeout           accept the request and never answer; the server drops it after
                      `timeout_s` (bounded so a benchmark cannot leak handlers) or as soon as
                      the client disconnects
    slow_first_token  wait `delay_s` before the first byte, then answer normally
    reset_mid_stream  send part of the body or stream, then abort the connection
    malformed_json    a 200 whose body (or one SSE chunk) is not valid JSON
    truncated_sse     a stream that ends with neither a finish reason nor `[DONE]`
                      (a non-streamed answer is cut short instead)

A plan may also be chosen per request with the `X-Mock-Fault: <mode>` header; the header wins
over the plan and does not use up the plan's `count`. Over HTTP the plan is the JSON of
`FaultPlan.to_dict()`, posted to the server's `/_mock/faults`.

This API is shared by every mock server: extend it, do not change it.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, cast, get_args

__all__ = [
    "FAULT_HEADER",
    "FAULT_MODES",
    "FaultInjector",
    "FaultMode",
    "FaultPlan",
    "FaultStats",
]

FaultMode = Literal[
    "none",
    "http_500",
    "http_503",
    "http_429",
    "timeout",
    "slow_first_token",
    "reset_mid_stream",
    "malformed_json",
    "truncated_sse",
]

#: Every valid mode, in declaration order.
FAULT_MODES: Final[tuple[FaultMode, ...]] = get_args(FaultMode)

#: Request header that forces a mode for that one request.
FAULT_HEADER: Final = "X-Mock-Fault"

_MODE_SET: Final[frozenset[str]] = frozenset(FAULT_MODES)


def _parse_mode(value: object) -> FaultMode:
    if not isinstance(value, str) or value not in _MODE_SET:
        raise ValueError(f"unknown fault mode {value!r}; expected one of {', '.join(FAULT_MODES)}")
    return cast(FaultMode, value)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Which requests fail, and the parameters of the failure.

    `rate` is the fraction of requests hit, drawn from a `random.Random(seed)` so a run is
    reproducible. `count` bounds the plan to the next N requests (each still subject to
    `rate`); once they are seen the plan is spent and requests answer normally again.

        FaultPlan("http_503")                        # every request fails
        FaultPlan("http_429", rate=0.1, seed=1)      # 10 % of requests, reproducibly
        FaultPlan("reset_mid_stream", count=2)       # the next two requests only
    """

    mode: FaultMode = "none"
    rate: float = 1.0
    count: int | None = None
    retry_after_s: float = 1.0  # http_429: the Retry-After the server sends
    delay_s: float = 1.0  # slow_first_token: the wait before the first byte
    timeout_s: float = 60.0  # timeout: how long a request is held before it is dropped
    seed: int = 0

    def __post_init__(self) -> None:
        _parse_mode(self.mode)
        if not (0.0 <= self.rate <= 1.0) or math.isnan(self.rate):
            raise ValueError(f"rate must be within [0, 1], got {self.rate!r}")
        if self.count is not None and self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count!r}")
        for name in ("retry_after_s", "delay_s", "timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, data: object) -> FaultPlan:
        """Build a plan from JSON data; raises `ValueError` naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("a fault plan must be a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault plan field(s): {', '.join(sorted(map(str, unknown)))}")
        kwargs: dict[str, Any] = dict(data)
        kwargs["mode"] = _parse_mode(kwargs.get("mode", "none"))
        for name in ("rate", "retry_after_s", "delay_s", "timeout_s"):
            if name in kwargs:
                value = kwargs[name]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{name} must be a number, got {value!r}")
                kwargs[name] = float(value)
        for name, nullable in (("count", True), ("seed", False)):
            if name not in kwargs or (nullable and kwargs[name] is None):
                continue
            value = kwargs[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class FaultStats:
    """What the injector decided so far: requests seen, and outcomes by mode."""

    requests: int = 0
    by_mode: dict[str, int] = field(default_factory=dict)

    @property
    def injected(self) -> int:
        """Requests that got a fault (any mode but "none")."""
        return self.requests - self.by_mode.get("none", 0)

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "injected": self.injected, "by_mode": dict(self.by_mode)}


class FaultInjector:
    """Decides, once per request, which fault a mock server plays.

    Not thread-safe by design: a mock server runs on one event loop, and `pick` never awaits.
    """

    __slots__ = ("_plan", "_random", "_remaining", "stats")

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.stats = FaultStats()
        self._plan = FaultPlan()
        self._random = random.Random(0)
        self._remaining: int | None = None
        self.set(plan or FaultPlan())

    @property
    def plan(self) -> FaultPlan:
        """The plan last set; its parameters (retry_after_s, delay_s, ...) shape every fault,
        including one forced by the header."""
        return self._plan

    @property
    def remaining(self) -> int | None:
        """Requests the plan still covers; None when it is not counted, 0 once spent."""
        return self._remaining

    @property
    def active(self) -> bool:
        """True while the plan can still inject a fault."""
        return self._plan.mode != "none" and self._remaining != 0

    def set(self, plan: FaultPlan) -> None:
        """Replace the active plan; its random draws start again from its seed."""
        self._plan = plan
        self._random = random.Random(plan.seed)
        self._remaining = plan.count

    def clear(self) -> None:
        """Back to answering every request normally."""
        self.set(FaultPlan())

    def reset_stats(self) -> None:
        self.stats = FaultStats()

    def pick(self, override: str | None = None) -> FaultMode:
        """The mode for the next request, and count it.

        `override` is the request's `X-Mock-Fault` header value, if any: it wins and does not
        consume the plan. An unknown override raises `ValueError` (the server answers 400).
        """
        mode = _parse_mode(override.strip()) if override else self._draw()
        stats = self.stats
        stats.requests += 1
        stats.by_mode[mode] = stats.by_mode.get(mode, 0) + 1
        return mode

    def _draw(self) -> FaultMode:
        plan = self._plan
        if plan.mode == "none":
            return "none"
        if self._remaining is not None:
            if self._remaining <= 0:
                return "none"  # spent; the plan stays readable until set() or clear()
            self._remaining -= 1
        return plan.mode if self._random.random() < plan.rate else "none"
