"""The `roost` command: run · chat · sessions · config check · serve.

Most commands run in-process through typer's CliRunner; `serve` (and the one check that
depends on a real pipe's width) run the venv's `roost` in a subprocess.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from roost.cli import app
from roost.testing.live import free_port
from tests.server.conftest import HAS_SQLITE, WAIT_S, wait_until

ROOST = Path(sys.executable).parent / "roost"
SESSION_ID = re.compile(r"session (ses_[0-9a-f]{32})")
needs_sqlite = pytest.mark.skipif(not HAS_SQLITE, reason="roost.sessions.sqlite not built yet")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ROOST_* variable or ./roost.toml of the developer's applies; a wide console so
    rich does not wrap what the tests read."""
    for name in list(os.environ):
        if name.startswith("ROOST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def roost(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=stdin, env={"COLUMNS": "200"})


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/roost.db"


def session_of(result: Result) -> str:
    match = SESSION_ID.search(result.stderr)
    assert match, result.stderr
    return match.group(1)


# -- run --------------------------------------------------------------------------------------
@pytest.mark.parametrize("store", ["memory", pytest.param("sqlite", marks=needs_sqlite)])
def test_run_prints_the_answer(tmp_path: Path, store: str) -> None:
    url = "memory://" if store == "memory" else f"sqlite:///{tmp_path}/x.db"
    result = roost("run", "weather", "weather in Paris", "--store", url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == '→ get_weather({"city":"Paris"})'
    assert lines[1].startswith('← get_weather: {"city":"Paris",')
    assert lines[2].startswith('Here is what I found. get_weather: {"city":"Paris",')
    session_of(result)


def test_run_the_calculator_example() -> None:
    result = roost("run", "calculator", "multiply 6 and 7", "--store", "memory://")
    assert result.exit_code == 0, result.output
    assert "multiply: 42" in result.stdout


def test_run_an_agent_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "shout.py").write_text('''
from roost import Agent, tool

@tool
def shout(text: str) -> str:
    """Shout the text back."""
    return text.upper() + "!"

loud = Agent(name="loud", tools=[shout])
''')
    result = roost("run", "loud", "shout hello", "--load", str(tmp_path / "shout.py"),
                   "--store", "memory://")
    assert result.exit_code == 0, result.output
    assert "shout: HELLO!" in result.stdout


def test_a_failed_run_exits_1_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text('''
from roost import Agent
from roost.testing.scripted import ScriptedModel

broken = Agent(name="broken", model=ScriptedModel([RuntimeError("no model today")]))
''')
    result = roost("run", "broken", "hello", "--load", str(tmp_path / "broken.py"),
                   "--store", "memory://")
    assert result.exit_code == 1
    assert "run failed" in result.stderr
    assert "no model today" in result.stderr


def test_run_an_unknown_agent_exits_1() -> None:
    result = roost("run", "nope", "hello", "--store", "memory://")
    assert result.exit_code == 1
    assert "agent_not_found" in result.stderr


def test_run_with_a_missing_agent_file_is_a_config_error() -> None:
    result = roost("run", "weather", "hi", "--load", "missing.py", "--store", "memory://")
    assert result.exit_code == 2
    assert "load: missing.py: not found" in result.stderr


# -- sessions ---------------------------------------------------------------------------------
@needs_sqlite
def test_sessions_list_show_delete_against_a_store_file(db: str) -> None:
    first = session_of(roost("run", "weather", "weather in Paris", "--store", db))
    again = roost("run", "weather", "weather in Oslo", "--store", db, "--session", first)
    assert again.exit_code == 0, again.output
    assert session_of(again) == first
    second = session_of(roost("run", "calculator", "add 2 and 3", "--store", db))

    listed = roost("sessions", "list", "--store", db)
    assert listed.exit_code == 0, listed.output
    assert first in listed.stdout and second in listed.stdout
    weather_only = roost("sessions", "list", "--agent", "weather", "--store", db)
    assert first in weather_only.stdout and second not in weather_only.stdout

    shown = roost("sessions", "show", first, "--store", db)
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.stdout)
    assert body["session"]["id"] == first
    assert body["session"]["agent"] == "weather"
    assert [e["seq"] for e in body["events"]] == list(range(1, 15))  # two turns of seven
    assert body["events"][1]["data"] == {"role": "user", "content": "weather in Paris"}
    assert body["events"][8]["data"] == {"role": "user", "content": "weather in Oslo"}

    deleted = roost("sessions", "delete", first, "--store", db)
    assert deleted.exit_code == 0, deleted.output
    assert f"deleted {first}" in deleted.stdout
    assert first not in roost("sessions", "list", "--store", db).stdout
    gone = roost("sessions", "show", first, "--store", db)
    assert gone.exit_code == 1
    assert "session_not_found" in gone.stderr
    twice = roost("sessions", "delete", first, "--store", db)
    assert twice.exit_code == 1
    assert f"no session {first}" in twice.stderr


@needs_sqlite
def test_sessions_list_prints_whole_ids_into_a_pipe(db: str, tmp_path: Path) -> None:
    session_id = session_of(roost("run", "weather", "weather in Paris", "--store", db))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    env["COLUMNS"] = "80"
    listed = subprocess.run([str(ROOST), "sessions", "list", "--store", db], env=env,
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert session_id in listed.stdout


# -- chat -------------------------------------------------------------------------------------
@needs_sqlite
def test_chat_answers_each_line_in_one_session(db: str) -> None:
    result = roost("chat", "weather", "--store", db,
                   stdin="weather in Paris\nweather in Tokyo\n")
    assert result.exit_code == 0, result.output
    answers = [line for line in result.stdout.splitlines() if "Here is what I found." in line]
    assert len(answers) == 2
    assert '"city":"Paris"' in answers[0] and '"city":"Tokyo"' in answers[1]
    session_id = session_of(result)
    shown = json.loads(roost("sessions", "show", session_id, "--store", db).stdout)
    assert [e["data"]["content"] for e in shown["events"]
            if e["type"] == "message" and e["data"]["role"] == "user"] == [
        "weather in Paris", "weather in Tokyo"]
    assert len(shown["events"]) == 14


def test_chat_stops_at_quit() -> None:
    result = roost("chat", "calculator", "--store", "memory://",
                   stdin="add 1 and 2\n/quit\nadd 3 and 4\n")
    assert result.exit_code == 0, result.output
    assert "add: 3" in result.stdout
    assert "add: 7" not in result.stdout


# -- config check -----------------------------------------------------------------------------
def test_config_check_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "roost.toml"
    path.write_text('[store]\nurl = "memory://"\n\n[providers.local]\n'
                    'base_url = "http://127.0.0.1:9/v1"\n\n'
                    '[models.fast]\nprovider = "local"\nmodel = "llama3"\n')
    result = roost("config", "check", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: store memory://, 1 providers, 1 model aliases")


def test_config_check_accepts_yaml(tmp_path: Path) -> None:
    path = tmp_path / "roost.yaml"
    path.write_text("server: {port: 8080}\nstore: {url: 'memory://'}\n")
    result = roost("config", "check", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok:")


def test_config_check_prints_each_problem_with_its_key_path(tmp_path: Path) -> None:
    path = tmp_path / "roost.toml"
    path.write_text('[server]\nport = "eighty"\ncolour = "blue"\n\n'
                    '[store]\nurl = "ftp://example.com/db"\n')
    result = roost("config", "check", str(path))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"reading {path} and ROOST_* variables"
    assert lines[1] == "configuration error: 3 problems"
    keys = {line.strip().split(":")[0] for line in lines[2:]}
    assert keys == {"server.port", "server.colour", "store.url"}
    assert result.stdout == ""


def test_config_check_names_an_alias_with_an_unknown_provider(tmp_path: Path) -> None:
    path = tmp_path / "roost.toml"
    path.write_text('[models.fast]\nprovider = "nowhere"\nmodel = "llama3"\n')
    result = roost("config", "check", str(path))
    assert result.exit_code == 2
    assert "  models.fast: no " in result.stderr



def test_config_check_prints_bracketed_messages_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "roost.toml"
    path.write_text('[models.fast]\nprovider = "nowhere"\nmodel = "llama3"\n')
    result = roost("config", "check", str(path))
    assert "  models.fast: no [providers.nowhere] section" in result.stderr


def test_config_check_survives_markup_in_a_key(tmp_path: Path) -> None:
    path = tmp_path / "roost.toml"
    path.write_text('[providers."[/bad]"]\ntype = "grpc"\n')
    result = roost("config", "check", str(path))
    assert result.exit_code == 2, result.output
    assert "providers.[/bad].type" in result.stderr


def test_run_survives_markup_in_a_tool_result(tmp_path: Path) -> None:
    (tmp_path / "echo.py").write_text('''
from roost import Agent, tool
from roost.testing.scripted import ScriptedModel, call

@tool
def echo(text: str) -> str:
    """Echo the text."""
    return text

echoer = Agent(name="echoer", tools=[echo],
               model=ScriptedModel([call("echo", text="see [/note] and [bold]x"), "done"]))
''')
    result = roost("run", "echoer", "hi", "--load", str(tmp_path / "echo.py"),
                   "--store", "memory://")
    assert result.exit_code == 0, result.output
    assert "see [/note] and [bold]x" in result.stdout


def test_config_check_reports_environment_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_SERVER__PORT", "99999")
    result = roost("config", "check")
    assert result.exit_code == 2
    assert "  server.port: Input should be less than or equal to 65535" in result.stderr


def test_config_check_of_a_missing_file(tmp_path: Path) -> None:
    result = roost("config", "check", str(tmp_path / "absent.toml"))
    assert result.exit_code == 2
    assert f"cannot read config file {tmp_path / 'absent.toml'}" in result.stderr


def test_serve_refuses_a_bad_config_before_listening(tmp_path: Path) -> None:
    path = tmp_path / "roost.toml"
    path.write_text("[server]\nport = -1\n")
    result = roost("serve", "--config", str(path))
    assert result.exit_code == 2
    assert "server.port" in result.stderr


# -- serve, as a real process ----------------------------------------------------------------
class Process:
    """A `roost` subprocess whose stderr lines are collected by an owned reader thread."""

    def __init__(self, *args: str, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
        self.popen = subprocess.Popen([str(ROOST), *args], cwd=cwd, env=env, text=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.put(line)

    def wait_for_line(self, text: str, timeout: float = WAIT_S) -> None:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"{text!r} not logged; got {self.log}") from None
            self.log.append(line)
            if text in line:
                return

    def stop(self) -> int:
        """SIGTERM once (a second one would cut the drain short) and wait for the exit."""
        self.popen.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        code = self.popen.wait(timeout=WAIT_S)
        self.close()
        return code

    def close(self) -> None:
        self._reader.join(WAIT_S)
        if self.popen.stderr is not None:
            self.popen.stderr.close()
        while not self.lines.empty():
            self.log.append(self.lines.get_nowait())


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start `roost ARGS…` in tmp_path; whatever is still running at the end is killed."""
    started: list[Process] = []

    def start(*args: str) -> Process:
        started.append(Process(*args, cwd=tmp_path))
        return started[-1]

    yield start
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait(timeout=WAIT_S)
        proc.close()


@pytest.mark.e2e
def test_serve_answers_then_exits_cleanly_on_sigterm(spawn: Callable[..., Process]) -> None:
    port = free_port()
    server = spawn("serve", "--store", "memory://", "--port", str(port),
                     "--log-level", "info")
    server.wait_for_line("Uvicorn running on")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json() == {"status": "ready", "store": "memory"}
        names = sorted(a["name"] for a in http.get("/v1/agents").json()["items"])
        assert names == ["calculator", "weather"]
    assert server.stop() == 0
    log = "".join(server.log)
    assert "Application shutdown complete" in log
    assert "Traceback" not in log


@pytest.mark.e2e
def test_sigterm_drains_an_in_flight_turn_before_exiting(spawn: Callable[..., Process],
                                                         tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text('''
from roost import Agent
from roost.testing.scripted import ScriptedModel

slow = Agent(name="slow", model=ScriptedModel(["finished"], delay_s=1.0, repeat_last=True))
''')
    port = free_port()
    server = spawn("serve", str(tmp_path / "slow.py"), "--store", "memory://",
                     "--port", str(port), "--log-level", "info")
    server.wait_for_line("Uvicorn running on")
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=WAIT_S) as http, \
            httpx.Client(base_url=url, timeout=WAIT_S) as turner:
        session = http.post("/v1/agents/slow/sessions", json={}).json()
        result: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: result.append(turner.post(
            f"/v1/sessions/{session['id']}/turns", json={"input": "go"})), daemon=True)
        worker.start()
        wait_until(lambda: http.get("/v1/admin/stats").json()["runs_active"] == 1,
                   what="the turn to start")
        server.popen.send_signal(signal.SIGTERM)
        # The signal handler flips readiness at once; the run is still in its model call.
        wait_until(lambda: http.get("/readyz").status_code == 503, what="readiness to drop")
        assert http.get("/healthz").status_code == 200
        refused = http.post(f"/v1/sessions/{session['id']}/turns", json={"input": "more"})
        assert refused.status_code == 503
        worker.join(WAIT_S)
    assert result[0].status_code == 200
    assert result[0].json()["status"] == "completed"
    assert result[0].json()["output"] == "finished"
    assert server.wait() == 0  # exits by itself once the drain is over
    assert "Traceback" not in "".join(server.log)
