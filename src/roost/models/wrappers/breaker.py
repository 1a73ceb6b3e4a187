"""Circuit breaker: stop calling an endpoint that is failing, probe it, resume when it heals.

    breaker = CircuitBreaker("openai:gpt-4o-mini", BreakerConfig(cooldown_s=15))
    model = BreakerModel(provider, breaker)

States::

    closed ──(failure rate ≥ threshold over the window, ≥ min_calls)──▶ open
    open ──(cooldown_s elapsed; next call)──▶ half_open
    half_open ──(half_open_probes successes)──▶ closed
    half_open ──(a probe fails)──▶ open (cool-down restarts)

While open, and for calls beyond the probes while half-open, calls fail fast with
`ModelError(kind="circuit_open", retryable=False)` — a fallback model serves instead.
One `CircuitBreaker` is shared by every wrapper that calls the same endpoint.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Literal

from roost.errors import ModelError
from roost.models.base import Model, ModelRequest, ModelResponse, StreamItem
from roost.models.wrappers.base import (
    Clock,
    SlidingCounter,
    WrapperModel,
    error_kind,
)
from roost.models.wrappers.config import BreakerConfig

logger = logging.getLogger("roost.models.breaker")

State = Literal["closed", "open", "half_open"]
#: on_transition(breaker name, old state, new state)
TransitionCallback = Callable[[str, str, str], None]

_CALLS, _FAILURES = 0, 1


class CircuitBreaker:
    """The state machine, independent of any model: `acquire` before a call, then report.

    Statistics: `state`, `transitions` (counts by "old->new"), `rejected` (calls failed fast),
    `opened_at` / `closed_at` (clock time of the last transitions), `failure_rate()`.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Clock = time.monotonic,
        on_transition: TransitionCallback | None = None,
    ) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self.on_transition = on_transition
        self._clock = clock
        self.state: State = "closed"
        self.transitions: dict[str, int] = {}
        self.rejected = 0
        self.opened_at: float | None = None
        self.closed_at: float | None = None
        self._probes_in_flight = 0
        self._probe_successes = 0
        # Bumped on every transition: a probe admitted in an earlier half-open episode
        # must not count in (or free a slot of) the current one.
        self._epoch = 0
        # Count-based window: the outcomes of the last window_size calls (True = failure).
        self._outcomes: deque[bool] = deque(maxlen=self.config.window_size)
        self._failures = 0
        self._timed = SlidingCounter(self.config.window_s, clock=clock)

    # -- the window -------------------------------------------------------------------------

    def _record(self, failed: bool) -> None:
        if self.config.window == "time":
            self._timed.add(_CALLS)
            if failed:
                self._timed.add(_FAILURES)
            return
        if len(self._outcomes) == self._outcomes.maxlen and self._outcomes[0]:
            self._failures -= 1
        self._outcomes.append(failed)
        self._failures += failed

    def _counts(self) -> tuple[int, int]:
        if self.config.window == "time":
            return self._timed.total(_CALLS), self._timed.total(_FAILURES)
        return len(self._outcomes), self._failures

    def failure_rate(self) -> float:
        calls, failures = self._counts()
        return failures / calls if calls else 0.0

    def _reset_window(self) -> None:
        self._outcomes.clear()
        self._failures = 0
        self._timed.reset()

    # -- transitions ------------------------------------------------------------------------

    def _move(self, new: State) -> None:
        old = self.state
        if old == new:
            return
        self.state = new
        key = f"{old}->{new}"
        self.transitions[key] = self.transitions.get(key, 0) + 1
        now = self._clock()
        if new == "open":
            self.opened_at = now
            if old == "half_open":
                logger.warning("circuit %s re-opened: a probe failed", self.name)
            else:
                calls, failures = self._counts()
                logger.warning("circuit %s opened: %d/%d calls failed", self.name, failures, calls)
        elif new == "closed":
            self.closed_at = now
            logger.info("circuit %s closed after successful probes", self.name)
        else:
            logger.info("circuit %s half-open: probing", self.name)
        if new != "half_open":
            self._reset_window()
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._epoch += 1
        if self.on_transition is not None:
            self.on_transition(self.name, old, new)

    # -- the protocol around one call -------------------------------------------------------

    def acquire(self) -> int | None:
        """Admit one call or raise `circuit_open`.

        Returns None for an ordinary call, or a probe ticket to hand back to `record_*`.
        """
        if self.state == "open":
            assert self.opened_at is not None
            if self._clock() - self.opened_at < self.config.cooldown_s:
                self._reject()
            self._move("half_open")
        if self.state == "half_open":
            if self._probes_in_flight >= self.config.half_open_probes:
                self._reject()
            self._probes_in_flight += 1
            return self._epoch
        return None

    def _reject(self) -> None:
        self.rejected += 1
        retry_after = None
        if self.opened_at is not None:
            retry_after = max(0.0, self.config.cooldown_s - (self._clock() - self.opened_at))
        raise ModelError(
            f"circuit {self.name} is {self.state.replace('_', '-')}: failing fast",
            retryable=False,
            retry_after=retry_after,
            provider=self.name,
            kind="circuit_open",
        )

    def _current_probe(self, probe: int | None) -> bool:
        return probe is not None and probe == self._epoch and self.state == "half_open"

    def record_success(self, probe: int | None) -> None:
        if probe is not None:
            if not self._current_probe(probe):
                return  # a stale probe from before another transition
            self._probes_in_flight -= 1
            self._probe_successes += 1
            if self._probe_successes >= self.config.half_open_probes:
                self._move("closed")
            return
        if self.state == "closed":
            self._record(False)

    def record_failure(self, probe: int | None, error: ModelError) -> None:
        if error_kind(error) not in self.config.failure_kinds:
            self.record_ignored(probe)
            return
        if probe is not None:
            if self._current_probe(probe):
                self._move("open")
            return
        if self.state != "closed":
            return
        self._record(True)
        calls, failures = self._counts()
        if calls >= self.config.min_calls and failures / calls >= self.config.failure_rate_threshold:
            self._move("open")

    def record_ignored(self, probe: int | None) -> None:
        """The call ended without telling anything about the endpoint (cancelled, 400…)."""
        if self._current_probe(probe):
            self._probes_in_flight -= 1

    def force_open(self) -> None:
        """Operator override (e.g. from an admin endpoint)."""
        self._move("open")

    def reset(self) -> None:
        """Back to closed with an empty window."""
        self._move("closed")
        self._reset_window()


class BreakerModel(WrapperModel):
    """Calls `inner` through `breaker`: fails fast while the breaker is open."""

    def __init__(self, inner: Model, breaker: CircuitBreaker | None = None) -> None:
        super().__init__(inner)
        self.breaker = breaker or CircuitBreaker(inner.name)

    @property
    def state(self) -> State:
        return self.breaker.state

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamItem, None]:
        probe = self.breaker.acquire()
        done = False
        try:
            async with aclosing(self.inner.stream(request)) as items:
                async for item in items:
                    if isinstance(item, ModelResponse):
                        # The verdict is in with the response: a consumer that stops
                        # reading right after it must not turn a success into nothing.
                        done = True
                        self.breaker.record_success(probe)
                    yield item
        except ModelError as error:
            done = True
            self.breaker.record_failure(probe, error)
            raise
        finally:
            if not done:
                # Cancelled, or the consumer stopped reading: no verdict on the endpoint,
                # but a probe slot must be given back or half-open would wedge.
                self.breaker.record_ignored(probe)
