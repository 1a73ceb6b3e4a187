"""Statistics providers read at scrape time, the separate metrics port, label caps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from roost.observability import Observability, ObservabilityConfig
from roost.observability.metrics import LabelGuard
from tests.observability import parse, scrape, value


class RuntimeStats:
    """Stands in for the runtime's own `statistics()`."""

    def __init__(self) -> None:
        self.queued = {"acme": {"high": 2, "normal": 5}, "globex": {"normal": 1}}
        self.rejections = {"queue_full": 3, "tenant_quota": 1}

    def __call__(self) -> dict[str, Any]:
        return {
            "queue_depth": self.queued,
            "runs_running": {"acme": 4},
            "admission_rejections_total": self.rejections,
            "sessions_active": 4,
            "sessions_cached": 120,
        }


def test_well_known_statistics_become_roost_metrics() -> None:
    obs = Observability()
    obs.register_stats("runtime", RuntimeStats())
    obs.register_stats("breakers", lambda: {"breaker_state": {"openai": "open",
                                                              "anthropic": "closed",
                                                              "local": "half_open"}})
    s = scrape(obs)
    assert value(s, "roost_queue_depth", tenant="acme", priority="high") == 2
    assert value(s, "roost_queue_depth", tenant="acme", priority="normal") == 5
    assert value(s, "roost_queue_depth", tenant="globex", priority="normal") == 1
    assert value(s, "roost_runs_running", tenant="acme") == 4
    assert value(s, "roost_admission_rejections_total", reason="queue_full") == 3
    assert value(s, "roost_sessions_active") == 4
    assert value(s, "roost_sessions_cached") == 120
    assert value(s, "roost_breaker_state", provider="openai") == 2
    assert value(s, "roost_breaker_state", provider="half_open") == 0
    assert value(s, "roost_breaker_state", provider="local") == 1
    assert value(s, "roost_breaker_state", provider="anthropic") == 0


def test_statistics_are_read_fresh_at_every_scrape() -> None:
    obs = Observability()
    stats = RuntimeStats()
    obs.register_stats("runtime", stats)
    assert value(scrape(obs), "roost_queue_depth", tenant="acme", priority="high") == 2
    stats.queued = {"acme": {"high": 7}}
    s = scrape(obs)
    assert value(s, "roost_queue_depth", tenant="acme", priority="high") == 7
    assert ("roost_queue_depth", frozenset({("tenant", "globex"), ("priority", "normal")})) not in s
    obs.unregister_stats("runtime")
    assert value(scrape(obs), "roost_queue_depth", tenant="acme", priority="high") == 0


def test_custom_keys_with_named_labels_and_counters() -> None:
    obs = Observability()
    obs.register_stats("pool", lambda: {
        "tool_pool_busy": {"sandbox": 2, "threads": 5},
        "tool_pool_spawned_total": 9,
        "flag": True,
    }, labels={"tool_pool_busy": ("pool",)})
    text = obs.metrics_response()[0].decode()
    assert "# TYPE roost_tool_pool_spawned_total counter" in text
    s = parse(text)
    assert value(s, "roost_tool_pool_busy", pool="sandbox") == 2
    assert value(s, "roost_tool_pool_spawned_total") == 9
    assert value(s, "roost_flag") == 1


def test_two_providers_reporting_one_key_are_summed() -> None:
    obs = Observability()
    obs.register_stats("cache-a", lambda: {"sessions_cached": 3})
    obs.register_stats("cache-b", lambda: {"sessions_cached": 4})
    assert value(scrape(obs), "roost_sessions_cached") == 7


def test_a_broken_provider_does_not_break_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    obs = Observability()

    def broken() -> dict[str, Any]:
        raise RuntimeError("stats went away")

    obs.register_stats("broken", broken)
    obs.register_stats("bad-keys", lambda: {"runs_in_flight": 5, "not a name": 1,
                                            "sessions_active": "lots"})
    obs.register_stats("runtime", RuntimeStats())
    with caplog.at_level("WARNING", logger="roost.observability"):
        for _ in range(3):
            s = scrape(obs)
    assert value(s, "roost_sessions_cached") == 120
    assert value(s, "roost_runs_in_flight") == 0  # the built-in, not the provider's 5
    assert value(s, "roost_sessions_active") == 4  # "lots" is skipped, not fatal
    # Once per distinct problem, not once per scrape.
    problems = [r.__dict__["problem"] for r in caplog.records]
    assert problems.count("RuntimeError: stats went away") == 1
    assert len(problems) == 3


def test_statistics_labels_are_capped() -> None:
    obs = Observability(ObservabilityConfig(max_label_values=2))
    obs.register_stats("runtime", lambda: {"runs_running": {f"t{i}": 1 for i in range(5)}})
    s = scrape(obs)
    assert value(s, "roost_runs_running", tenant="t0") == 1
    assert value(s, "roost_runs_running", tenant="t1") == 1
    assert value(s, "roost_runs_running", tenant="other") == 3


def test_label_guard() -> None:
    guard = LabelGuard(2)
    assert [guard(v) for v in ("a", "b", "c", "a", "b", "d")] == ["a", "b", "other", "a", "b",
                                                                  "other"]


def test_each_instance_has_its_own_registry_and_metrics_can_be_off() -> None:
    first, second = Observability(), Observability()
    first.register_stats("x", lambda: {"sessions_cached": 1})
    assert value(scrape(second), "roost_sessions_cached") == 0
    off = Observability(ObservabilityConfig(metrics=False))
    assert off.metrics_response()[0] == b""
    assert off.metrics is None


async def test_separate_metrics_port_serves_the_exposition() -> None:
    obs = Observability(ObservabilityConfig(metrics_port=0, metrics_host="127.0.0.1"))
    obs.register_stats("runtime", RuntimeStats())
    await obs.start()
    try:
        port = obs.metrics_port
        assert port
        status, body = await http_get(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200")
        assert value(parse(body.decode()), "roost_sessions_cached") == 120
        status, _ = await http_get(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 405")
        # A client that sends garbage and hangs up does not hurt the server.
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00garbage")
        writer.close()
        status, _ = await http_get(port, b"GET / HTTP/1.0\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200")
    finally:
        await obs.shutdown()
    assert obs.metrics_port is None


async def http_get(port: int, request: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], body
