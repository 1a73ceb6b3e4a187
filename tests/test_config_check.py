"""`roost config check` finds everything `roost serve` would refuse, all at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import isolated, roost

__all__ = ["isolated"]

ROOT = Path(__file__).resolve().parents[1]

BAD = '''
load = ["weather.py", "missing.py"]

[providers.local]
base_url = "localhost:8001/v1"

[models.fast]
provider = "openai"
model = "gpt-4o-mini"
settings = { temprature = 0.2, max_tokens = 100, repetition_penalty = 1.1 }

[agents.weather]
limits = { max_stepz = 3, run_timeout_s = -1 }
policies = { double_texting = "queue", history_messages = 0 }

[agents.ghost]
model = "gpt-4o"
'''


def lines_of(stderr: str) -> dict[str, str]:
    out = {}
    for line in stderr.splitlines():
        key, _, message = line.strip().partition(": ")
        out[key] = message
    return out


def test_every_problem_serve_would_meet_is_listed(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "weather.py").write_text((ROOT / "examples" / "weather.py").read_text())
    (conf / "roost.toml").write_text(BAD.replace('[providers.local]\nbase_url = "localhost:8001/v1"\n', ""))
    result = roost("config", "check", str(conf / "roost.toml"))
    assert result.exit_code == 2, result.output
    problems = lines_of(result.stderr)
    assert problems["load"].startswith("missing.py") or "missing.py" in problems["load"]
    # weather.py was found beside the config file, not in the working directory.
    assert "agents.ghost" in problems and "agents: weather" in problems["agents.ghost"]
    assert "did you mean 'openai:gpt-4o'" in problems["agents.ghost.model"]
    assert "did you mean 'max_steps'" in problems["agents.weather.limits.max_stepz"]
    assert "run_timeout_s" in problems["agents.weather.limits.run_timeout_s"]
    assert "'queue' is not one of" in problems["agents.weather.policies.double_texting"]
    assert "agents.weather.policies.history_messages" in problems
    assert "did you mean 'temperature'" in problems["models.fast.settings.temprature"]
    assert "models.fast.settings.repetition_penalty" not in problems  # a vendor extension
    assert "warning" in problems and "$OPENAI_API_KEY is not set" in result.stderr


def test_a_bad_base_url_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "roost.toml"
    path.write_text('[providers.local]\nbase_url = "localhost:8001/v1"\n')
    result = roost("config", "check", str(path))
    assert result.exit_code == 2
    assert "providers.local.base_url" in result.stderr


def test_a_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "roost.toml"
    path.write_text("[server\nport = 1\n")
    result = roost("config", "check", str(path))
    assert result.exit_code == 2
    assert f"{path} is not valid TOML" in result.stderr


def test_it_says_which_file_it_read(tmp_path: Path) -> None:
    (tmp_path / "roost.toml").write_text("[server]\nport = 8100\n")
    result = roost("config", "check")  # ./roost.toml, found in the working directory
    assert result.exit_code == 0, result.output
    assert "reading roost.toml and ROOST_* variables" in result.stderr


def test_the_shipped_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    result = roost("config", "check", str(ROOT / "roost.example.toml"))
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr


def test_config_schema_is_the_settings_json_schema() -> None:
    result = roost("config", "schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["type"] == "object"
    assert {"server", "store", "providers", "models", "agents", "load"} <= set(schema["properties"])


def test_serve_refuses_what_config_check_refuses(tmp_path: Path) -> None:
    path = tmp_path / "roost.toml"
    path.write_text('[agents.weather]\npolicies = { double_texting = "queue" }\n')
    result = roost("serve", "--config", str(path), "--store", "memory://")
    assert result.exit_code == 2
    assert "agents.weather.policies.double_texting" in result.stderr


def test_serve_reports_an_unset_api_key_at_start_up(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = tmp_path / "roost.toml"
    path.write_text('[agents.weather]\nmodel = "openai:gpt-4o-mini"\n')
    with socket.socket() as taken:  # serve stops at the port, after its checks
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = roost("serve", "--config", str(path), "--store", "memory://",
                       "--port", str(taken.getsockname()[1]))
    assert result.exit_code == 1
    assert "warning: providers.openai: $OPENAI_API_KEY is not set" in result.stderr
