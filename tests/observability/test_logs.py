"""Structured logs: context on every line, one format for all loggers, no secrets, ever."""

from __future__ import annotations

import asyncio
import io
import logging

import orjson
import structlog

from roost.observability import Observability, ObservabilityConfig, logs
from roost.observability.logs import bind, bound, current_context, redact, unbind
from tests.observability import captured_logs, json_lines, make_run, one_turn, traced

SECRETS = [
    "sk-proj-abcdefghijklmnop1234",
    "sk-ant-api03-ZYXWVUTSRQ",
    "eyJhbGciOiJIUzI1NiJ9.payload.sig",
    "hunter2-password",
    "AKIAABCDEFGHIJKLMNOP",
    "tok_live_0123456789",
]


def test_every_line_carries_the_bound_context_and_is_json() -> None:
    with captured_logs() as out, bound(request_id="req-1", tenant="acme"):
        logging.getLogger("roost.runtime").info("admitted", extra={"queue": 3})
        structlog.get_logger("roost.server").warning("slow", elapsed_ms=12)
    first, second = json_lines(out)
    assert first["event"] == "admitted"
    assert first["logger"] == "roost.runtime"
    assert first["level"] == "info"
    assert first["queue"] == 3
    assert second["event"] == "slow" and second["elapsed_ms"] == 12
    assert second["logger"] == "roost.server"
    for line in (first, second):
        assert line["request_id"] == "req-1" and line["tenant"] == "acme"
        assert line["timestamp"].endswith("Z")


def test_uvicorn_loggers_share_the_format() -> None:
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(logging.StreamHandler(io.StringIO()))  # as uvicorn's config does
    with captured_logs() as out:
        assert uvicorn_error.handlers == [] and uvicorn_error.propagate
        uvicorn_error.info("Started server process [%d]", 42)
        logging.getLogger("uvicorn.access").info("GET / 200")  # ours replaces it
    (line,) = json_lines(out)
    assert line["event"] == "Started server process [42]"
    assert line["logger"] == "uvicorn.error"


def test_run_lines_carry_run_fields_and_trace_ids() -> None:
    obs, exporter = traced()
    with captured_logs() as out:
        run = make_run()
        token = obs.hooks.run_start(run, model="demo")
        logging.getLogger("roost.engine").info("step")
        run.status = "failed"
        run.error = {"type": "model_error", "message": "upstream said Bearer abcdefghijkl"}
        obs.hooks.run_end(token, run)
    step, finished = json_lines(out)
    span = exporter.get_finished_spans()[0]
    for line in (step, finished):
        assert line["run_id"] == "run-1" and line["session_id"] == "sess-1"
        assert line["tenant"] == "acme" and line["agent"] == "support"
        assert line["trace_id"] == f"{span.context.trace_id:032x}"
    assert finished["event"] == "run finished"
    assert finished["level"] == "warning"
    assert finished["status"] == "failed" and finished["error_type"] == "model_error"
    assert "abcdefghijkl" not in out.getvalue()


def test_run_log_line_reports_usage() -> None:
    obs = Observability()
    with captured_logs() as out:
        one_turn(obs, make_run())
    (line,) = [x for x in json_lines(out) if x["event"] == "run finished"]
    assert line["status"] == "completed"
    assert line["input_tokens"] == 2000 and line["output_tokens"] == 200
    assert line["duration_ms"] >= 0


def test_secrets_never_reach_the_output() -> None:
    with captured_logs() as out:
        log = logging.getLogger("roost.test")
        log.info("calling with key %s", SECRETS[0])
        log.info("headers", extra={"headers": {
            "Authorization": f"Bearer {SECRETS[2]}", "X-API-Key": SECRETS[1],
            "accept": "application/json"}})
        log.info("config", extra={"settings": {"providers": [{"name": "openai",
                  "api_key": SECRETS[0], "nested": {"password": SECRETS[3]}}]}})
        log.info("url", extra={"dsn": f"postgresql://roost:{SECRETS[3]}@db/roost"})
        structlog.get_logger("roost.test").info("aws", creds=f"key={SECRETS[4]}",
                                                token=SECRETS[5], access_token=SECRETS[5])
        try:
            raise RuntimeError(f"upstream rejected api_key={SECRETS[5]}")
        except RuntimeError:
            log.exception("boom")
    text = out.getvalue()
    for secret in SECRETS:
        assert secret not in text
    lines = json_lines(out)
    assert lines[1]["headers"]["accept"] == "application/json"
    assert lines[1]["headers"]["Authorization"] == "[REDACTED]"
    assert lines[2]["settings"]["providers"][0]["name"] == "openai"
    assert "RuntimeError" in lines[-1]["exception"]


def test_redaction_keeps_counts_and_does_not_mutate_the_callers_data() -> None:
    headers = {"authorization": "Bearer abcdefghijkl", "x-request-id": "r1"}
    assert redact(headers) == {"authorization": "[REDACTED]", "x-request-id": "r1"}
    assert headers["authorization"] == "Bearer abcdefghijkl"
    usage = {"input_tokens": 10, "max_tokens": 100, "note": "input_tokens=10"}
    assert redact(usage) == usage
    assert redact(redact("api_key=abcdefgh")) == "api_key=[REDACTED]"


def test_console_format_is_redacted_too() -> None:
    config = ObservabilityConfig(log_format="console")
    with captured_logs(config) as out:
        logging.getLogger("roost.test").warning("token=%s", SECRETS[5])
    text = out.getvalue()
    assert "token=[REDACTED]" in text and SECRETS[5] not in text
    assert not text.lstrip().startswith("{")


def test_auto_format_is_json_when_not_a_tty() -> None:
    with captured_logs(ObservabilityConfig(log_format="auto")) as out:
        logging.getLogger("roost.test").info("hello")
    assert json_lines(out)[0]["event"] == "hello"


def test_level_filters_and_unconfigure_restores() -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    with captured_logs(ObservabilityConfig(log_format="json", log_level="warning")) as out:
        logging.getLogger("roost.test").info("hidden")
        structlog.get_logger("roost.test").info("hidden too")
        logging.getLogger("roost.test").warning("shown")
    assert [x["event"] for x in json_lines(out)] == ["shown"]
    assert (root.level, root.handlers) == before


def test_configure_twice_replaces_the_handler() -> None:
    obs = Observability()
    first, second = io.StringIO(), io.StringIO()
    try:
        obs.configure_logging(stream=first)
        obs.configure_logging(stream=second)
        logging.getLogger("roost.test").warning("once")
    finally:
        logs.unconfigure_logging()
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


async def test_context_is_per_task() -> None:
    ready = asyncio.Event()
    seen: dict[str, object] = {}

    async def request(rid: str) -> None:
        with bound(request_id=rid):
            if rid == "a":
                await ready.wait()
            else:
                ready.set()
            seen[rid] = current_context()["request_id"]

    await asyncio.gather(request("a"), request("b"))
    assert seen == {"a": "a", "b": "b"}
    assert "request_id" not in current_context()


def test_bind_and_unbind_nest() -> None:
    outer = bind(tenant="t1")
    inner = bind(run_id="r1")
    assert current_context() == {"tenant": "t1", "run_id": "r1"}
    unbind(inner)
    assert current_context() == {"tenant": "t1"}
    unbind(outer)
    assert current_context() == {}
    unbind(outer)  # a used token is tolerated


def test_uvicorns_color_message_stays_out_of_json_logs() -> None:
    out = io.StringIO()
    logs.configure_logging("info", "json", stream=out)
    try:
        logging.getLogger("uvicorn.error").info(
            "Started server process [%d]", 7,
            extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"})
    finally:
        logs.unconfigure_logging()
    line = orjson.loads(out.getvalue().splitlines()[-1])
    assert line["event"] == "Started server process [7]"
    assert "color_message" not in line
