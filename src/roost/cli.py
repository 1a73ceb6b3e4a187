"""The `roost` command: serve · run · chat · sessions · keys · config · migrate."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from roost.auth.cli import keys_app
from roost.config import Settings, load_settings
from roost.errors import ConfigError, RoostError

app = typer.Typer(help="Roost: a production runtime for AI agents.", no_args_is_help=True,
                  add_completion=False)
sessions_app = typer.Typer(help="Inspect and delete stored sessions.", no_args_is_help=True)
config_app = typer.Typer(help="Check configuration.", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")

console = Console()
errors = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c",
                                                   help="roost.toml or roost.yaml")]
StoreOption = Annotated[str | None, typer.Option("--store", help="store URL, e.g. sqlite:///x.db")]
LoadOption = Annotated[list[str] | None, typer.Option("--load", "-l",
                                                      help="agent file or module (repeatable)")]


def _settings(config: Path | None, store: str | None = None, **server: Any) -> Settings:
    overrides: dict[str, Any] = {}
    if store:
        overrides["store"] = {"url": store}
    server = {k: v for k, v in server.items() if v is not None}
    if server:
        overrides["server"] = server
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        _print_config_errors(exc)
        raise typer.Exit(2) from None


def _print_config_errors(exc: ConfigError) -> None:
    errors.print(f"[bold red]configuration error[/]: {len(exc.problems) or 1} problem(s)")
    for key, message in exc.problems or [("(config)", exc.message)]:
        errors.print(f"  [yellow]{escape(key)}[/]: {escape(message)}")


def _agents(settings: Settings, targets: list[str]):  # type: ignore[no-untyped-def]
    from roost.loader import bundled_examples, load_agents

    targets = [*settings.load, *targets] or [str(p) for p in bundled_examples()]
    try:
        return load_agents(targets)
    except ConfigError as exc:
        _print_config_errors(exc)
        raise typer.Exit(2) from None


@app.command()
def serve(
    paths: Annotated[list[str] | None, typer.Argument(help="agent files or modules")] = None,
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    config: ConfigOption = None,
    store: StoreOption = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Serve agents over HTTP (the bundled examples when no PATH is given)."""
    from roost.auth.bind import check_bind
    from roost.server.assemble import assemble
    from roost.server.serve import serve as run_server

    settings = _settings(config, store, host=host, port=port)
    if log_level != "info":  # the flag wins over the config file
        settings.observability.log_level = log_level  # type: ignore[assignment]  # validated below
    agents = _agents(settings, paths or [])
    try:
        check_bind(settings.server.host, auth_enabled=settings.auth.enabled,
                   insecure=settings.auth.insecure)
        runtime, observability = assemble(settings, agents)
    except ConfigError as exc:
        _print_config_errors(exc)
        raise typer.Exit(2) from None
    observability.configure_logging()
    names = ", ".join(a.name for a in agents)
    errors.print(f"[bold]roost[/] serving [cyan]{names}[/] on http://{settings.server.host}:"
                 f"{settings.server.port} (store {settings.store.url}; docs at /docs)")
    run_server(runtime, observability, host=settings.server.host, port=settings.server.port,
               log_level=log_level)


@contextlib.asynccontextmanager
async def _runtime(settings: Settings, targets: list[str]) -> AsyncIterator[Any]:
    from roost.runtime.runtime import Runtime

    runtime = Runtime(settings, _agents(settings, targets))
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.close()


async def _turn(runtime: Any, session_id: str, text: str, timeout_s: float | None) -> int:
    handle = await runtime.submit_turn("default", session_id, text, stream=True,
                                       timeout_s=timeout_s)
    streamed = False
    async for event in handle.channel.follow():
        if event is None:
            continue
        if event.type == "message.delta":
            console.print(event.data["text"], end="", markup=False, highlight=False)
            streamed = True
        elif event.type == "tool.call":
            console.print(f"[dim]→ {escape(event.data['name'])}({escape(event.data['arguments'])})[/]")
        elif event.type == "tool.result":
            style = "red" if event.data.get("is_error") else "dim"
            console.print(f"[{style}]← {escape(event.data['name'])}: "
                          f"{escape(event.data['content'][:200])}[/]", highlight=False)
        elif event.type == "message" and event.data.get("role") == "assistant":
            if not event.data.get("tool_calls"):
                if streamed:
                    console.print()
                else:
                    console.print(event.data.get("content") or "", markup=False, highlight=False)
            streamed = False
    run = await handle.wait()
    if run.status != "completed":
        errors.print(f"[red]run {run.status}[/]: {escape(str((run.error or {}).get('message', '')))}")
        return 1
    return 0


@app.command()
def run(
    agent: Annotated[str, typer.Argument(help="agent name")],
    message: Annotated[str, typer.Argument(help="the user's message")],
    load: LoadOption = None,
    config: ConfigOption = None,
    store: StoreOption = None,
    session: Annotated[str | None, typer.Option(help="continue this session id")] = None,
    timeout: Annotated[float | None, typer.Option(help="turn timeout in seconds")] = None,
) -> None:
    """Run one turn and stream the answer to the terminal."""
    settings = _settings(config, store)

    async def main() -> int:
        async with _runtime(settings, load or []) as runtime:
            session_id = session or (await runtime.create_session("default", agent)).id
            code = await _turn(runtime, session_id, message, timeout)
            errors.print(f"[dim]session {session_id}[/]")
            return code

    raise typer.Exit(_guard(main))


@app.command()
def chat(
    agent: Annotated[str, typer.Argument(help="agent name")],
    load: LoadOption = None,
    config: ConfigOption = None,
    store: StoreOption = None,
    session: Annotated[str | None, typer.Option(help="continue this session id")] = None,
) -> None:
    """Talk to an agent in a REPL that keeps its session (Ctrl-D or /quit to leave)."""
    settings = _settings(config, store)

    async def main() -> int:
        async with _runtime(settings, load or []) as runtime:
            session_id = session or (await runtime.create_session("default", agent)).id
            errors.print(f"[dim]session {session_id} — /quit to leave[/]")
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, _prompt)
                if line is None or line.strip() in ("/quit", "/exit"):
                    return 0
                if line.strip():
                    await _turn(runtime, session_id, line, None)

    raise typer.Exit(_guard(main))


def _prompt() -> str | None:
    try:
        return input("you> ")
    except EOFError:
        return None


def _guard(main: Any) -> int:
    try:
        return int(asyncio.run(main()))
    except RoostError as exc:
        errors.print(f"[red]{exc.type}[/]: {escape(exc.message)}")
        return 1
    except KeyboardInterrupt:
        return 130


async def _with_store(settings: Settings, action: Any) -> Any:
    from roost.sessions import open_store

    store = open_store(settings.store.url, **settings.store.options)
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()


@sessions_app.command("list")
def sessions_list(
    agent: Annotated[str | None, typer.Option(help="only this agent's sessions")] = None,
    user_id: Annotated[str | None, typer.Option(help="only this user's sessions")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    tenant: Annotated[str, typer.Option()] = "default",
    config: ConfigOption = None,
    store: StoreOption = None,
) -> None:
    """List sessions, newest first."""
    settings = _settings(config, store)
    try:
        page = asyncio.run(_with_store(settings, lambda s: s.list_sessions(
            tenant, agent=agent, user_id=user_id, limit=limit)))
    except RoostError as exc:
        errors.print(f"[red]{exc.type}[/]: {escape(exc.message)}")
        raise typer.Exit(1) from None
    table = Table("agent", "user", "version", "events", "updated")
    # Ids are what `show` and `delete` take: never truncate them, even through a pipe.
    table.columns.insert(0, Column("id", no_wrap=True, min_width=36))
    import datetime as dt

    for s in page.items:
        table.add_row(s.id, s.agent, s.user_id or "", str(s.version), str(s.last_seq),
                      dt.datetime.fromtimestamp(s.updated_at).isoformat(timespec="seconds"))
    console.print(table)


@sessions_app.command("show")
def sessions_show(
    session_id: Annotated[str, typer.Argument()],
    tenant: Annotated[str, typer.Option()] = "default",
    config: ConfigOption = None,
    store: StoreOption = None,
) -> None:
    """Show a session and its event log as JSON."""
    settings = _settings(config, store)

    async def show(s: Any) -> Any:
        session = await s.get_session(tenant, session_id)
        events = await s.read_events(tenant, session_id, after=0, limit=10_000)
        return {"session": session, "events": events}

    try:
        body = asyncio.run(_with_store(settings, show))
    except RoostError as exc:
        errors.print(f"[red]{exc.type}[/]: {escape(exc.message)}")
        raise typer.Exit(1) from None
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(body)).decode() + "\n")


@sessions_app.command("delete")
def sessions_delete(
    session_id: Annotated[str, typer.Argument()],
    tenant: Annotated[str, typer.Option()] = "default",
    config: ConfigOption = None,
    store: StoreOption = None,
) -> None:
    """Delete a session with its events and runs."""
    settings = _settings(config, store)
    try:
        deleted = asyncio.run(_with_store(settings, lambda s: s.delete_session(tenant, session_id)))
    except RoostError as exc:
        errors.print(f"[red]{exc.type}[/]: {escape(exc.message)}")
        raise typer.Exit(1) from None
    if not deleted:
        errors.print(f"[red]no session {session_id}[/]")
        raise typer.Exit(1)
    console.print(f"deleted {session_id}")


@config_app.command("check")
def config_check(
    config: Annotated[Path | None, typer.Argument(help="roost.toml or roost.yaml")] = None,
) -> None:
    """Validate a config file (and ROOST_* variables); print each problem with its key path."""
    settings = _settings(config)
    from roost.models.registry import ModelRegistry

    problems: list[tuple[str, str]] = []
    registry = ModelRegistry(settings.providers, settings.models)
    for alias in settings.models:
        try:
            registry._build(alias, ())
        except ConfigError as exc:
            problems.extend(exc.problems or [(f"models.{alias}", exc.message)])
    if problems:
        _print_config_errors(ConfigError("invalid configuration", problems))
        raise typer.Exit(2)
    console.print(f"[green]ok[/]: store {settings.store.url}, {len(settings.providers)} providers, "
                  f"{len(settings.models)} model aliases")


@app.command()
def migrate(config: ConfigOption = None, store: StoreOption = None) -> None:
    """Apply pending schema migrations to the configured PostgreSQL store."""
    settings = _settings(config, store)
    if not settings.store.url.startswith(("postgres://", "postgresql://")):
        console.print(f"nothing to migrate for {settings.store.url.split('://')[0]} "
                      "(its schema is created when it opens)")
        return
    from roost.sessions.migrate import migrate as apply

    try:
        applied = asyncio.run(apply(settings.store.url,
                                    schema=settings.store.options.get("schema")))
    except RoostError as exc:
        errors.print(f"[red]{exc.type}[/]: {escape(exc.message)}")
        raise typer.Exit(1) from None
    console.print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


if __name__ == "__main__":  # pragma: no cover
    app()
