"""Settings: a TOML or YAML file, overridden by `ROOST_*` environment variables, validated.

    [server]
    port = 8000

    [store]
    url = "sqlite:///.roost/roost.db"

    [providers.local]
    type = "openai"                      # any OpenAI-compatible server: vLLM, Ollama, llama.cpp
    base_url = "http://127.0.0.1:8001/v1"
    api_key_env = "LOCAL_API_KEY"

    [models.fast]
    provider = "local"
    model = "llama3"

Environment variables use `__` between levels: `ROOST_SERVER__PORT=9000`,
`ROOST_STORE__URL=postgresql://…`. `load_settings()` raises `ConfigError` whose `problems`
name each offending key by its dotted path.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from roost.auth.config import AuthConfig
from roost.background.config import BackgroundConfig
from roost.errors import ConfigError
from roost.observability.config import ObservabilityConfig
from roost.server.transport import TransportConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="request body limit (413 above)")
    heartbeat_s: float = Field(15.0, gt=0, description="SSE heartbeat comment interval")
    # A header naming the tenant, honoured only from admins and auth.trusted_proxies
    # (e.g. a gateway). Off by default: the tenant is the principal's.
    tenant_header: str | None = None
    workers: int = Field(1, ge=1)
    shutdown_grace_s: float = Field(30.0, ge=0, description="in-flight runs' grace on SIGTERM")
    max_list_limit: int = Field(200, ge=1)
    backlog: int = Field(4096, ge=16, description="listen backlog (the kernel may cap it)")
    # Python's garbage collector thresholds (gen0 allocations, gen1 and gen2 collection
    # counts), set at start-up; None keeps the interpreter's (700, 10, 10). See `app.py`.
    gc_thresholds: tuple[int, int, int] | None = (20_000, 20, 100)

    @field_validator("gc_thresholds")
    @classmethod
    def _positive(cls, value: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if value is not None and min(value) < 1:
            raise ValueError("every threshold must be at least 1 (None: Python's defaults)")
        return value


class StoreConfig(_Section):
    url: str = "sqlite:///.roost/roost.db"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        scheme = value.partition("://")[0]
        if "://" not in value or scheme not in ("memory", "sqlite", "postgres", "postgresql",
                                                  "redis", "rediss"):
            raise ValueError("use memory://, sqlite:///path, postgresql://… or redis://…")
        return value


class ArtifactsConfig(_Section):
    """Where large tool results go. Unset: next to the session store (files beside the SQLite
    database; the same PostgreSQL or Redis server)."""

    url: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    retention_s: float | None = Field(None, gt=0, description="delete artifacts older than this")


class SessionsConfig(_Section):
    ttl_s: float | None = Field(None, gt=0, description="sessions expire this long after creation")
    sweep_interval_s: float = Field(60.0, gt=0)
    cache_max_sessions: int = Field(10_000, ge=0)
    cache_max_bytes: int = Field(256 * 1024 * 1024, ge=0)
    max_state_bytes: int = Field(1024 * 1024, ge=1)


class TenantQuotaConfig(_Section):
    max_running: int | None = Field(None, ge=1)
    max_queued: int | None = Field(None, ge=0)
    rate: float | None = Field(None, gt=0, description="turns per second")
    burst: int | None = Field(None, ge=1)
    weight: float = Field(1.0, gt=0)


class AdmissionConfig(_Section):
    max_running: int | None = Field(None, ge=1, description="default: derived from the machine")
    max_queued: int | None = Field(None, ge=0)
    default_quota: TenantQuotaConfig = Field(default_factory=lambda: TenantQuotaConfig())
    tenants: dict[str, TenantQuotaConfig] = Field(default_factory=dict)
    # The running limit follows the event loop's load (runtime/adaptive.py); max_running
    # stays its ceiling.
    adaptive: bool = False
    adaptive_target_busy: float = Field(0.7, gt=0, le=1,
                                        description="loop CPU share above which it shrinks")
    adaptive_max_lag_s: float = Field(0.025, gt=0, description="loop lag above which it shrinks")


class RuntimeConfig(_Section):
    auto_resume: bool = Field(False, description="also resume runs interrupted by a shutdown "
                              "(any tenant), on whichever instance claims them first")
    lease_ttl_s: float = Field(10.0, gt=0, description="how long a run and its session stay "
                               "owned by an instance that stopped renewing (it died); renewed "
                               "every lease_ttl_s / 3")
    takeover: bool = Field(True, description="claim and resume runs whose owner's lease expired")
    takeover_interval_s: float = Field(1.0, gt=0, description="how often to look for them")
    idempotency_ttl_s: float = Field(86400.0, gt=0, description="how long an Idempotency-Key "
                                     "keeps answering with the same run or session")
    run_channel_buffer: int = Field(1024, ge=16)
    store_retry_s: float = Field(1.0, gt=0, description="after a store failure, turns fail fast "
                                 "with 503 for this long")


class ProviderConfig(_Section):
    type: Literal["openai", "anthropic"] = "openai"
    base_url: str | None = None
    api_key_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    max_connections: int = Field(1000, ge=1)
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(300.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            scheme, sep, rest = value.partition("://")
            if scheme not in ("http", "https") or not sep or not rest.split("/")[0]:
                raise ValueError("use an http:// or https:// URL with a host, "
                                 "e.g. http://127.0.0.1:8001/v1")
        return value


class ModelAliasConfig(_Section):
    provider: str
    model: str
    settings: dict[str, Any] = Field(default_factory=dict)
    # Wrappers (retry, breaker, fallback, rate limit, routing); see docs/configuration.md.
    policy: dict[str, Any] = Field(default_factory=dict)


class AgentOverride(_Section):
    """Per-agent overrides from config (the agent itself is defined in Python)."""

    model: str | None = None
    limits: dict[str, Any] = Field(default_factory=dict)
    policies: dict[str, Any] = Field(default_factory=dict)
    mcp_servers: list[str] = Field(default_factory=list)  # names of [mcp_servers.NAME]
    builtin_tools: list[Literal["ask_user"]] = Field(
        default_factory=list, description="built-in tools to add: ask_user")
    # Other hosted agents this one may call as tools (roost.tools.agent_tool: child runs).
    agent_tools: list[str] = Field(default_factory=list)


class Settings(BaseSettings):
    """All of Roost's configuration: `load_settings("roost.toml")` or `Settings(store={"url": "memory://"})`."""

    model_config = SettingsConfigDict(env_prefix="ROOST_", env_nested_delimiter="__",
                                      extra="forbid")

    server: ServerConfig = Field(default_factory=lambda: ServerConfig())
    store: StoreConfig = Field(default_factory=lambda: StoreConfig())
    sessions: SessionsConfig = Field(default_factory=lambda: SessionsConfig())
    artifacts: ArtifactsConfig = Field(default_factory=lambda: ArtifactsConfig())
    admission: AdmissionConfig = Field(default_factory=lambda: AdmissionConfig())
    runtime: RuntimeConfig = Field(default_factory=lambda: RuntimeConfig())
    background: BackgroundConfig = Field(default_factory=lambda: BackgroundConfig())
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelAliasConfig] = Field(default_factory=dict)
    agents: dict[str, AgentOverride] = Field(default_factory=dict)
    # MCP servers agents can use (`mcp_servers = [...]` per agent): command/args/env/cwd or
    # url/headers, and prefix, timeout_s, max_artifact_bytes, inline_text_bytes (see
    # roost.tools.mcp.MCPToolset).
    mcp_servers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Per-tool concurrency and rate limits, per-tenant allow/deny lists of tools
    # (roost.tools.policy): [tool_policies.limits.NAME], [tool_policies.tenants.TENANT].
    tool_policies: dict[str, Any] = Field(default_factory=dict)
    # Python files or modules to load agents from (CLI arguments add to these).
    load: list[str] = Field(default_factory=list)
    observability: ObservabilityConfig = Field(default_factory=lambda: ObservabilityConfig())
    auth: AuthConfig = Field(default_factory=lambda: AuthConfig())
    transport: TransportConfig = Field(default_factory=lambda: TransportConfig())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over the file (passed as init kwargs).
        return (env_settings, init_settings)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML or YAML file into a dict; `ConfigError` names the file on failure."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}",
                          [(str(path), str(exc.strerror))]) from None
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} is not valid {path.suffix.lstrip('.').upper() or 'TOML'}: {exc}",
                          [(str(path), str(exc))]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table/mapping",
                          [(str(path), "the top level must be a table/mapping")])
    return data


def config_path(path: str | Path | None = None) -> Path | None:
    """The file `load_settings(path)` reads: `path`, `$ROOST_CONFIG`, ./roost.toml, or None."""
    if path is None:
        path = os.environ.get("ROOST_CONFIG") or (
            "roost.toml" if Path("roost.toml").exists() else None)
    return Path(path) if path else None


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from `path` (or `$ROOST_CONFIG`, or ./roost.toml if present) + env + overrides.

    Agent files in the file's `load` are relative to the file, not to the working directory."""
    path = config_path(path)
    data = read_config_file(path) if path else {}
    if path and isinstance(data.get("load"), list):
        data["load"] = [_beside(path, target) for target in data["load"]]
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return Settings(**data)
    except ValidationError as exc:  # every problem, each with its key path
        problems = [(".".join(str(p) for p in err["loc"]) or "(root)", err["msg"])
                    for err in exc.errors(include_url=False)]
        summary = "; ".join(f"{k}: {m}" for k, m in problems)
        raise ConfigError(f"invalid configuration: {summary}", problems) from None


def _beside(config: Path, target: Any) -> Any:
    """A relative agent file named in `config`, as a path from the working directory."""
    if not isinstance(target, str) or not (target.endswith(".py") or "/" in target):
        return target  # a module name: imported from sys.path
    candidate = Path(target)
    return target if candidate.is_absolute() else str(config.parent / candidate)
