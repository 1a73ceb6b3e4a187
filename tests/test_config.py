"""Settings: TOML and YAML files, `ROOST_*` environment overrides, and errors that name the
offending key by its dotted path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from roost import Settings, load_settings
from roost.errors import ConfigError, UserError

TOML = """\
load = ["examples/weather.py"]

[server]
host = "0.0.0.0"
port = 8100
heartbeat_s = 5.0

[store]
url = "sqlite:///var/roost.db"

[sessions]
ttl_s = 3600

[admission]
max_running = 64

[admission.tenants.acme]
max_running = 4
weight = 2.0

[providers.local]
type = "openai"
base_url = "http://127.0.0.1:8001/v1"
api_key_env = "LOCAL_API_KEY"

[models.fast]
provider = "local"
model = "llama3"

[agents.weather.limits]
max_steps = 4
"""

YAML = """\
server:
  host: 0.0.0.0
  port: 8100
  heartbeat_s: 5.0
store:
  url: sqlite:///var/roost.db
sessions:
  ttl_s: 3600
admission:
  max_running: 64
  tenants:
    acme: {max_running: 4, weight: 2.0}
providers:
  local: {type: openai, base_url: "http://127.0.0.1:8001/v1", api_key_env: LOCAL_API_KEY}
models:
  fast: {provider: local, model: llama3}
agents:
  weather: {limits: {max_steps: 4}}
load: [examples/weather.py]
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ROOST_* variable or ./roost.toml of the developer's leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("ROOST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def assert_full(settings: Settings) -> None:
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 8100)
    assert settings.server.heartbeat_s == 5.0
    assert settings.store.url == "sqlite:///var/roost.db"
    assert settings.sessions.ttl_s == 3600
    assert settings.admission.max_running == 64
    assert settings.admission.tenants["acme"].max_running == 4
    assert settings.admission.tenants["acme"].weight == 2.0
    assert settings.providers["local"].base_url == "http://127.0.0.1:8001/v1"
    assert settings.models["fast"].model == "llama3"
    assert settings.agents["weather"].limits == {"max_steps": 4}
    assert [Path(p).relative_to(Path(p).parents[1]).as_posix() for p in settings.load] == [
        "examples/weather.py"]  # relative to the config file (see test_load_paths_…)


def test_toml_file_loads(tmp_path: Path) -> None:
    assert_full(load_settings(write(tmp_path, "roost.toml", TOML)))


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_file_loads(tmp_path: Path, suffix: str) -> None:
    assert_full(load_settings(write(tmp_path, f"roost{suffix}", YAML)))


def test_defaults_without_any_file() -> None:
    settings = load_settings()
    assert settings.server.port == 8000
    assert settings.store.url == "sqlite:///.roost/roost.db"
    assert settings.server.heartbeat_s == 15.0


def test_an_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "roost.yaml", "")).server.port == 8000


def test_roost_toml_in_the_working_directory_is_found(tmp_path: Path) -> None:
    write(tmp_path, "roost.toml", "[server]\nport = 8123\n")
    assert load_settings().server.port == 8123


def test_roost_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "elsewhere.yaml", "server: {port: 8124}\n")
    monkeypatch.setenv("ROOST_CONFIG", str(path))
    assert load_settings().server.port == 8124


def test_environment_overrides_the_file_key_by_key(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "roost.toml", TOML)
    monkeypatch.setenv("ROOST_SERVER__PORT", "9100")
    monkeypatch.setenv("ROOST_STORE__URL", "memory://")
    settings = load_settings(path)
    assert settings.server.port == 9100
    assert settings.store.url == "memory://"
    # The rest of each section still comes from the file.
    assert settings.server.host == "0.0.0.0"
    assert settings.server.heartbeat_s == 5.0


def test_environment_alone_configures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_SERVER__PORT", "9200")
    monkeypatch.setenv("ROOST_SESSIONS__TTL_S", "60")
    settings = load_settings()
    assert (settings.server.port, settings.sessions.ttl_s) == (9200, 60)


def test_explicit_overrides_merge_into_a_section(tmp_path: Path) -> None:
    """What the CLI's --store and --port do."""
    settings = load_settings(write(tmp_path, "roost.toml", TOML), store={"url": "memory://"})
    assert settings.store.url == "memory://"
    assert settings.server.port == 8100


def problems_of(tmp_path: Path, name: str, text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, name, text))
    assert isinstance(caught.value, UserError)
    return dict(caught.value.problems)


def test_each_problem_is_named_by_its_key_path(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "roost.toml", """\
[server]
port = "eighty"
colour = "blue"

[store]
url = "ftp://example.com/db"

[admission.tenants.acme]
max_running = 0

[providers.local]
type = "grpc"

[nonsense]
x = 1
""")
    assert set(problems) == {"server.port", "server.colour", "store.url",
                             "admission.tenants.acme.max_running", "providers.local.type",
                             "nonsense"}
    assert "integer" in problems["server.port"]
    assert "Extra inputs" in problems["server.colour"]
    assert "sqlite:///" in problems["store.url"]
    assert "greater than or equal to 1" in problems["admission.tenants.acme.max_running"]


def test_yaml_problems_are_named_the_same_way(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "roost.yaml",
                           "server: {port: 70000}\nsessions: {ttl_s: -1}\n")
    assert set(problems) == {"server.port", "sessions.ttl_s"}


def test_the_message_summarises_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "roost.toml", '[server]\nport = "x"\nworkers = 0\n'))
    assert "server.port" in caught.value.message
    assert "server.workers" in caught.value.message


def test_a_bad_environment_value_is_named_by_its_key_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_SERVER__PORT", "not-a-port")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert [key for key, _ in caught.value.problems] == ["server.port"]


def test_an_unknown_environment_key_inside_a_section_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_SERVER__PROT", "9000")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert [key for key, _ in caught.value.problems] == ["server.prot"]


@pytest.mark.parametrize(("name", "text", "says"), [
    ("roost.toml", "[server\nport = 1\n", "not valid TOML"),
    ("roost.yaml", "server: [unclosed\n", "not valid YAML"),
    ("roost.yaml", "- just\n- a list\n", "top level must be a table"),
])
def test_an_unreadable_file_is_a_config_error(tmp_path: Path, name: str, text: str,
                                              says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, name, text))
    assert says in caught.value.message
    assert [key for key, _ in caught.value.problems] == [str(tmp_path / name)]  # names the file


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "absent.toml")
    assert "absent.toml" in caught.value.message
    assert caught.value.problems[0][0] == str(tmp_path / "absent.toml")


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ("gc_thresholds = [20000, 0, 100]", "server.gc_thresholds", "at least 1"),
    ("gc_thresholds = [1, 2]", "server.gc_thresholds.2", "required"),
    ("gc_thresholds = 700", "server.gc_thresholds", "tuple"),
])
def test_gc_thresholds_are_checked(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    problems = problems_of(tmp_path, "roost.toml", f"[server]\n{text}\n")
    assert list(problems) == [key]
    assert fragment in problems[key]


def test_gc_thresholds_can_be_left_to_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_SERVER__GC_THRESHOLDS", "null")
    assert load_settings().server.gc_thresholds is None
    monkeypatch.setenv("ROOST_SERVER__GC_THRESHOLDS", "[5000, 10, 50]")
    assert load_settings().server.gc_thresholds == (5000, 10, 50)


def test_load_paths_are_relative_to_the_config_file(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "conf"
    config.mkdir()
    path = write(config, "roost.toml", 'load = ["agents/a.py", "mypkg.agents", "/abs/b.py"]\n')
    monkeypatch.chdir(tmp_path)
    assert load_settings(path).load == [str(config / "agents/a.py"), "mypkg.agents", "/abs/b.py"]


@pytest.mark.parametrize("url", ["localhost:8001/v1", "ftp://x/v1", "http://"])
def test_a_provider_base_url_must_be_http(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, providers={"local": {"base_url": url}})
    assert [key for key, _ in caught.value.problems] == ["providers.local.base_url"]
