"""Fault-tolerance benchmark: a flaky primary, a healthy secondary, the wrapper chain between.

    .venv/bin/python bench/bench_faults.py                 # defaults: 3000 calls, 30 % faults
    .venv/bin/python bench/bench_faults.py --calls 6000 --concurrency 64 --json

Two in-process mock servers: the primary (OpenAI-compatible) fails a share of its requests
with a mix of HTTP 500, HTTP 503 and connections reset mid-body; the secondary (Anthropic)
is healthy. Every call goes through

    Fallback(Retry(Breaker(primary)), secondary)

as `apply_policies` builds it, in four phases:

1. healthy    — the primary answers everything;
2. degraded   — `--failure-rate` of primary requests fail: success rate (target ≥ 99.9 %)
                and retries / calls (must stay within the 10 % budget, plus its minimum);
3. outage     — every primary request fails: how long (and how many primary calls) the
                breaker takes to open;
4. recovery   — the primary is healthy again: how long until half-open probes close the
                breaker (the cool-down dominates).

Calls are not streamed by default: a streamed call that breaks after its first tokens must
fail (nothing may switch models mid-answer), which `--stream` shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from roost.errors import ModelError  # noqa: E402
from roost.models.anthropic import AnthropicModel  # noqa: E402
from roost.models.base import Message, ModelRequest, ModelResponse  # noqa: E402
from roost.models.openai_compat import OpenAICompatModel  # noqa: E402
from roost.models.wrappers import FallbackModel, PolicyState, RetryModel, apply_policies  # noqa: E402
from roost.testing.faults import FaultInjector, FaultMode  # noqa: E402
from roost.testing.mock_anthropic import MockAnthropicServer  # noqa: E402
from roost.testing.mock_openai import MockOpenAIServer  # noqa: E402


class MixedFaults(FaultInjector):
    """Fails `rate` of requests with a mode drawn from `modes` (FaultPlan holds one mode)."""

    def __init__(self, modes: list[FaultMode], seed: int = 1) -> None:
        super().__init__()
        self.modes = modes
        self.rate = 0.0
        self._rng = random.Random(seed)

    def _draw(self) -> FaultMode:
        if self.rate > 0 and self._rng.random() < self.rate:
            return self._rng.choice(self.modes)
        return "none"


@dataclass
class Phase:
    name: str
    calls: int = 0
    ok: int = 0
    failed: int = 0
    by_secondary: int = 0
    started: float = 0.0
    elapsed: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


async def run_phase(
    phase: Phase, model: Any, calls: int, concurrency: int, stream: bool, secondary_name: str
) -> None:
    loop = asyncio.get_running_loop()
    phase.started = loop.time()
    queue = iter(range(calls))

    async def worker() -> None:
        for n in queue:
            request = ModelRequest(
                messages=[Message(role="user", content=f"turn {n}: what is the weather")],
                stream=stream, deadline=loop.time() + 10.0,
            )
            phase.calls += 1
            response: ModelResponse | None = None
            try:
                async for item in model.stream(request):
                    if isinstance(item, ModelResponse):
                        response = item
            except ModelError as exc:
                phase.failed += 1
                key = exc.kind if exc.kind != "error" else f"error/{exc.status_code}"
                phase.errors[key] = phase.errors.get(key, 0) + 1
                continue
            assert response is not None
            phase.ok += 1
            if response.model == secondary_name:
                phase.by_secondary += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    phase.elapsed = loop.time() - phase.started


async def main(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    transitions: list[tuple[float, str, str]] = []
    shared = PolicyState(on_transition=lambda name, old, new: transitions.append((loop.time(), old, new)))
    faults = MixedFaults(["http_500", "http_503", "reset_mid_stream"])
    async with (
        MockOpenAIServer(latency_s=args.latency_ms / 1000) as primary_server,
        MockAnthropicServer(latency_s=args.latency_ms / 1000) as secondary_server,
    ):
        primary_server.faults = faults
        primary = OpenAICompatModel("mock-gpt", base_url=primary_server.base_url, provider="primary")
        secondary = AnthropicModel("mock-claude", base_url=secondary_server.url, provider="secondary")
        policy = {
            "retry": {"max_attempts": 3, "base_delay_s": 0.02, "max_delay_s": 0.5},
            # The library defaults (a 50-call window, 20 calls minimum, 50 % threshold) but
            # a short cool-down, so the benchmark does not idle for 15 s.
            "breaker": {"cooldown_s": args.cooldown_s},
            "fallbacks": ["secondary"],
        }
        model = apply_policies(primary, policy, resolve={"secondary": secondary}.__getitem__,
                               shared=shared)
        assert isinstance(model, FallbackModel)
        retry = model.models[0]
        assert isinstance(retry, RetryModel)
        [breaker] = shared.breakers.values()
        n = args.calls
        plan = [("healthy", 0.0, n // 10), ("degraded", args.failure_rate, n * 6 // 10),
                ("outage", 1.0, n // 10)]
        phases: list[Phase] = []
        retry_before = (0, 0)
        retry_stats: dict[str, Any] = {}
        cpu = time.process_time()
        try:
            for name, rate, calls in plan:
                faults.rate = rate
                phase = Phase(name)
                primary_before = primary_server.stats.chat_requests
                await run_phase(phase, model, calls, args.concurrency, args.stream, "mock-claude")
                phases.append(phase)
                if name == "degraded":
                    retry_stats = {
                        "calls": retry.calls - retry_before[0],
                        "retries": retry.retries - retry_before[1],
                        "primary_requests": primary_server.stats.chat_requests - primary_before,
                        "denied_budget": retry.denied_budget,
                        # The budget's own view: every call in its sliding window so far.
                        "budget_window_calls": retry.budget.calls_in_window,
                        "budget_window_retries": retry.budget.retries_in_window,
                    }
                retry_before = (retry.calls, retry.retries)
                if name == "outage":
                    outage_start = phase.started
            # Recovery: keep calling until the breaker has closed again (bounded).
            faults.rate = 0.0
            recovery = Phase("recovery")
            recovery_start = loop.time()
            while breaker.state != "closed" and loop.time() - recovery_start < args.cooldown_s + 30:
                await run_phase(recovery, model, args.concurrency, args.concurrency, args.stream,
                                "mock-claude")
            recovery.started = recovery_start
            recovery.elapsed = loop.time() - recovery_start
            phases.append(recovery)
        finally:
            await model.aclose()
        cpu = time.process_time() - cpu

    opened = next((t for t, old, new in transitions if new == "open" and t >= outage_start), None)
    closed = next((t for t, old, new in transitions if new == "closed" and t >= recovery_start), None)
    # The cool-down that ended in the close started at the last opening before it.
    last_open = max((t for t, old, new in transitions if new == "open" and closed and t < closed),
                    default=None)
    degraded = next(p for p in phases if p.name == "degraded")
    total_calls = sum(p.calls for p in phases)
    total_ok = sum(p.ok for p in phases)
    return {
        "config": {"calls": n, "concurrency": args.concurrency, "failure_rate": args.failure_rate,
                   "latency_ms": args.latency_ms, "cooldown_s": args.cooldown_s,
                   "stream": args.stream, "policy": policy},
        "phases": [
            {"name": p.name, "calls": p.calls, "ok": p.ok, "failed": p.failed,
             "success_rate": round(p.ok / p.calls, 5) if p.calls else None,
             "served_by_secondary": p.by_secondary, "elapsed_s": round(p.elapsed, 3),
             "errors": p.errors}
            for p in phases
        ],
        "overall_success_rate": round(total_ok / total_calls, 5),
        "degraded": {
            "success_rate": round(degraded.ok / degraded.calls, 5),
            "retries_per_call": round(retry_stats["retries"] / max(1, retry_stats["calls"]), 4),
            **retry_stats,
        },
        "breaker": {
            "transitions": [(round(t - outage_start, 3), old, new) for t, old, new in transitions],
            "open_after_outage_s": None if opened is None else round(opened - outage_start, 4),
            "closed_after_recovery_s": None if closed is None else round(closed - recovery_start, 4),
            # What the probes themselves took once the cool-down had run out.
            "closed_after_cooldown_s": (
                None if closed is None or last_open is None
                else round(closed - last_open - args.cooldown_s, 4)
            ),
            "final_state": breaker.state,
            "rejected_fast": breaker.rejected,
        },
        "fault_stats": faults.stats.to_dict(),
        "cpu_s": round(cpu, 3),
    }


def report(result: dict[str, Any]) -> None:
    print(f"{'phase':10} {'calls':>6} {'ok':>6} {'failed':>6} {'success':>8} {'secondary':>9} {'time s':>7}")
    for p in result["phases"]:
        print(f"{p['name']:10} {p['calls']:6d} {p['ok']:6d} {p['failed']:6d} "
              f"{p['success_rate']:8.4%} {p['served_by_secondary']:9d} {p['elapsed_s']:7.2f}")
    d = result["degraded"]
    b = result["breaker"]
    print(f"\noverall success rate: {result['overall_success_rate']:.4%}")
    print(f"degraded phase: success {d['success_rate']:.4%}; retries/calls {d['retries_per_call']:.2%} "
          f"({d['retries']} retries for {d['calls']} calls, {d['denied_budget']} denied by the budget; "
          f"budget window: {d['budget_window_retries']} retries / {d['budget_window_calls']} calls)")
    print(f"breaker: opened {b['open_after_outage_s']} s after the outage began; "
          f"closed {b['closed_after_recovery_s']} s after recovery "
          f"(cool-down {result['config']['cooldown_s']} s, probes done "
          f"{b['closed_after_cooldown_s']} s after it); {b['rejected_fast']} calls failed fast")
    print(f"faults injected: {result['fault_stats']}")
    print(f"CPU: {result['cpu_s']} s for {sum(p['calls'] for p in result['phases'])} calls")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--failure-rate", type=float, default=0.3)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--cooldown-s", type=float, default=2.0)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    outcome = asyncio.run(main(arguments))
    if arguments.json:
        print(json.dumps(outcome, indent=2))
    else:
        report(outcome)
