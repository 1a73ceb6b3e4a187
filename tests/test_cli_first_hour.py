"""The CLI a new user meets first: version, help, choices, agent files, errors that say the fix."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from roost import __version__
from roost.testing.live import free_port
from tests.test_cli import ROOST, db, isolated, needs_sqlite, roost, session_of

__all__ = ["db", "isolated"]  # fixtures used by name

SHOUT = '''
from roost import Agent, tool

@tool
def shout(text: str) -> str:
    """Shout the text back."""
    return text.upper() + "!"

weather = Agent(name="weather", tools=[shout])
'''


def test_version() -> None:
    result = roost("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"roost {__version__}"


def test_python_dash_m_roost() -> None:
    out = subprocess.run([sys.executable, "-m", "roost", "--version"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"roost {__version__}"


@pytest.mark.parametrize("command", [["serve"], ["run"], ["chat"], ["sessions", "list"],
                                     ["config", "check"]])
def test_help_shows_no_python_type_names(command: list[str]) -> None:
    result = roost(*command, "--help")
    assert result.exit_code == 0
    assert not re.search(r"<(str|int|float|bool|path|list\[str\])>", result.stdout), result.stdout


def test_an_unknown_log_level_is_a_usage_error_not_a_traceback() -> None:
    result = roost("serve", "--log-level", "verbose", "--store", "memory://")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "debug" in result.output and "warning" in result.output


def test_serve_with_no_agents_says_how_to_give_it_some(monkeypatch: pytest.MonkeyPatch) -> None:
    from roost import loader

    monkeypatch.setattr(loader, "bundled_examples", lambda: [])
    result = roost("serve", "--store", "memory://")
    assert result.exit_code == 2
    assert "no agents to serve" in result.stderr
    assert "roost serve my_agent.py" in result.stderr


def test_serve_on_a_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = roost("serve", "--store", "memory://", "--port", str(port))
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(another process? try --port)"]


def test_serve_with_an_unreachable_store_is_one_line_and_exit_1() -> None:
    port = free_port()  # nothing listens here
    result = roost("serve", "--store", f"redis://127.0.0.1:{port}/0", "--port", str(free_port()))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not reachable" in lines[0], result.stderr


def test_run_an_unknown_agent_lists_the_agents() -> None:
    result = roost("run", "nope", "hello", "--store", "memory://")
    assert result.exit_code == 1
    assert "no agent 'nope'; agents: calculator, weather" in result.stderr


def test_run_takes_an_agent_file(tmp_path: Path) -> None:
    (tmp_path / "loud.py").write_text(SHOUT)
    result = roost("run", str(tmp_path / "loud.py"), "shout hello", "--store", "memory://")
    assert result.exit_code == 0, result.output
    assert "shout: HELLO!" in result.stdout


def test_a_local_file_wins_over_the_bundled_example_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "weather.py").write_text(SHOUT)  # cwd is tmp_path (the isolated fixture)
    result = roost("run", "weather", "shout hello", "--store", "memory://")
    assert result.exit_code == 0, result.output
    assert "shout: HELLO!" in result.stdout
    assert "loading ./weather.py" in result.stderr


def test_chat_exits_on_ctrl_c_at_the_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    def interrupted(prompt: str = "") -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(builtins, "input", interrupted)
    monkeypatch.setenv("HOME", str(Path.cwd()))
    result = roost("chat", "weather", "--store", "memory://")
    assert result.exit_code == 0, result.output


@needs_sqlite
def test_sessions_list_json_pages_with_a_cursor(db: str) -> None:
    ids = {session_of(roost("run", "weather", f"weather in {city}", "--store", db))
           for city in ("Paris", "Tokyo", "Lima")}
    first = roost("sessions", "list", "--json", "--limit", "2", "--store", db)
    assert first.exit_code == 0, first.output
    page = json.loads(first.stdout)
    assert len(page["items"]) == 2 and page["next_cursor"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", page["items"][0]["updated_at"])
    rest = json.loads(roost("sessions", "list", "--json", "--store", db,
                            "--cursor", page["next_cursor"]).stdout)
    assert {s["id"] for s in page["items"] + rest["items"]} == ids
    assert rest["next_cursor"] is None


@needs_sqlite
def test_sessions_list_table_has_zoned_timestamps(db: str) -> None:
    session_of(roost("run", "weather", "weather in Paris", "--store", db))
    listed = subprocess.run([str(ROOST), "sessions", "list", "--store", db],
                            capture_output=True, text=True, timeout=30)
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listed.stdout), listed.stdout


def test_init_makes_a_project_that_serve_config_check_and_pytest_run(tmp_path: Path) -> None:
    result = roost("init", "proj")
    assert result.exit_code == 0, result.output
    project = tmp_path / "proj"
    assert sorted(p.name for p in project.iterdir()) == ["agent.py", "roost.toml",
                                                         "test_agent.py"]
    checked = subprocess.run([str(ROOST), "config", "check"], cwd=project, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    ran = subprocess.run([str(ROOST), "run", "assistant", "greet Ada", "--store", "memory://"],
                         cwd=project, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert "greet: Hello, Ada!" in ran.stdout
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            cwd=project, capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert roost("init", "proj").exit_code == 1  # never overwrites


def test_shell_completion_is_offered() -> None:
    result = roost("--help")
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


def test_run_an_agent_file_beside_loaded_agents(tmp_path: Path) -> None:
    (tmp_path / "loud.py").write_text(SHOUT.replace('name="weather"', 'name="loud"'))
    (tmp_path / "two.py").write_text(SHOUT + '\nother = Agent(name="other")\n')
    both = roost("run", "loud.py", "shout hi", "--load", "two.py", "--store", "memory://")
    assert both.exit_code == 0, both.output
    assert "shout: HI!" in both.stdout
    ambiguous = roost("run", "two.py", "hi", "--store", "memory://")
    assert ambiguous.exit_code == 1
    assert "defines several agents (weather, other)" in ambiguous.stderr
