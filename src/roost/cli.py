"""The `roost` command: serve · run · chat · sessions · keys · config · migrate."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import socket
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
from roost.background.cli import schedules_app
from roost.config import Settings, load_settings
from roost.errors import ConfigError, RoostError
from roost.webhooks.cli import webhooks_app

# Plain help (click's layout): no Python type names such as <list[str]> next to options, and
# no rich panels hard-wrapped to 80 columns when the output is not a terminal. Typer shows an
# argument's Python type even when it has a metavar; the metavar (or the name) is enough.
if hasattr(typer.core, "TyperArgument"):
    typer.core.TyperArgument.display_type_rich = (  # type: ignore[method-assign]
        lambda self, ctx: None)

app = typer.Typer(help="Roost: a production runtime for AI agents.", no_args_is_help=True,
                  rich_markup_mode=None)
sessions_app = typer.Typer(help="Inspect and delete stored sessions.", no_args_is_help=True,
                           rich_markup_mode=None)
config_app = typer.Typer(help="Check configuration.", no_args_is_help=True,
                         rich_markup_mode=None)
app.add_typer(sessions_app, name="sessions")
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
app.add_typer(schedules_app, name="schedules")
app.add_typer(webhooks_app, name="webhooks")

# soft_wrap: a long line (an id, a URL) stays one line in a pipe or a narrow terminal.
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


class LogLevel(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"


def _version(value: bool) -> None:
    if value:
        from roost import __version__

        console.print(f"roost {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Roost: a production runtime for AI agents."""


ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", metavar="FILE",
                                                   help="roost.toml or roost.yaml")]
StoreOption = Annotated[str | None, typer.Option("--store", metavar="URL",
                                                 help="store URL, e.g. sqlite:///x.db")]
LoadOption = Annotated[list[str] | None, typer.Option(
    "--load", "-l", metavar="FILE|MODULE", help="agent file or module (repeatable)")]


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
    count = len(exc.problems) or 1
    headline = escape(exc.message) if count == 1 else f"{count} problems"
    errors.print(f"[bold red]configuration error[/]: {headline}")
    for key, message in exc.problems or [("(config)", exc.message)]:
        errors.print(f"  [yellow]{escape(key)}[/]: {escape(message)}")


NO_AGENTS = ("no agents to serve: name agent files or modules (roost serve my_agent.py), "
             "set load = [\"my_agent.py\"] in roost.toml or ROOST_LOAD='[\"my_agent.py\"]', "
             "or start a project with roost init")


def _agents(settings: Settings, targets: list[str]):  # type: ignore[no-untyped-def]
    from roost.loader import bundled_examples, load_agents

    targets = [*settings.load, *targets] or [str(p) for p in bundled_examples()]
    if not targets:
        errors.print(f"[red]error[/]: {escape(NO_AGENTS)}")
        raise typer.Exit(2)
    try:
        agents = load_agents(targets)
    except ConfigError as exc:
        _print_config_errors(exc)
        raise typer.Exit(2) from None
    return agents


def _one_agent(settings: Settings, agent: str, load: list[str]):  # type: ignore[no-untyped-def]
    """`run`/`chat`'s AGENT: a name, or an agent file (as `serve` takes). A local `NAME.py`
    wins over the bundled example of that name, and says so."""
    path = Path(agent)
    if path.suffix == ".py" or path.is_file():
        # The file's only agent, or the one named like the file; --load adds others (tools
        # may call them) without making the choice ambiguous.
        mine = _agents(settings.model_copy(update={"load": []}), [agent])
        named = [a for a in mine if a.name == path.stem]
        if len(mine) > 1 and not named:
            errors.print(f"[red]agent_not_found[/]: {escape(agent)} defines several agents "
                         f"({escape(', '.join(a.name for a in mine))}): load it with --load "
                         "and name one")
            raise typer.Exit(1)
        others = _agents(settings, load) if load or settings.load else []
        return [*others, *mine], (named or mine)[0].name
    targets = list(load)
    if not targets and not settings.load and Path(f"{agent}.py").is_file():
        errors.print(f"[dim]loading ./{escape(agent)}.py (a local file wins over the bundled "
                     "examples; --load to choose)[/]")
        targets.append(f"{agent}.py")
    agents = _agents(settings, targets)
    names = sorted(a.name for a in agents)
    if agent not in names:
        errors.print(f"[red]agent_not_found[/]: no agent {escape(repr(agent))}; "
                     f"agents: {escape(', '.join(names))}")
        raise typer.Exit(1)
    return agents, agent


def _refuse_problems(settings: Settings, agents: list[Any]) -> None:
    """What `roost config check` reports stops `serve` too; its warnings are printed."""
    from roost.config_check import check

    problems, warnings = check(settings, agents)
    for key, message in warnings:
        errors.print(f"[yellow]warning[/]: {escape(key)}: {escape(message)}")
    if problems:
        _print_config_errors(ConfigError("invalid configuration", problems))
        raise typer.Exit(2)


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    """The listening socket, bound before anything starts: a port in use is one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        errors.print(f"[red]error[/]: cannot listen on {escape(host)}:{port}: "
                     f"{escape(exc.strerror or str(exc))} (another process? try --port)")
        raise typer.Exit(1) from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _check_store(settings: Settings) -> None:
    """Open and close the store once, so an unreachable one is one line, not a traceback."""
    if settings.store.url.startswith("memory://"):
        return
    from roost.sessions import open_store

    async def probe() -> None:
        store = open_store(settings.store.url, **settings.store.options)
        await store.open()
        await store.close()

    try:
        asyncio.run(probe())
    except ConfigError as exc:
        _print_config_errors(exc)
        raise typer.Exit(2) from None
    except (RoostError, OSError) as exc:
        message = exc.message if isinstance(exc, RoostError) else str(exc)
        errors.print(f"[red]error[/]: store {escape(_redact(settings.store.url))} is not "
                     f"reachable: {escape(message)}")
        raise typer.Exit(1) from None


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        return f"{scheme}{sep}{userinfo.split(':')[0]}:***@{host}"
    return url


@app.command()
def serve(
    paths: Annotated[list[str] | None, typer.Argument(
        metavar="[FILE|MODULE]...", help="agent files or modules")] = None,
    load: LoadOption = None,
    host: Annotated[str | None, typer.Option(metavar="ADDRESS", help="bind address")] = None,
    port: Annotated[int | None, typer.Option(metavar="PORT", help="port")] = None,
    config: ConfigOption = None,
    store: StoreOption = None,
    log_level: Annotated[LogLevel, typer.Option(case_sensitive=False)] = LogLevel.info,
) -> None:
    """Serve agents over HTTP (the bundled examples when no FILE is given)."""
    from roost.auth.bind import check_bind
    from roost.server.assemble import assemble
    from roost.server.serve import serve as run_server

    settings = _settings(config, store, host=host, port=port)
    if log_level != LogLevel.info:  # the flag wins over the config file
        settings.observability.log_level = log_level.value  # type: ignore[assignment]
    agents = _agents(settings, [*(load or []), *(paths or [])])
    _refuse_problems(settings, agents)
    try:  # no auth on a non-loopback address unless insecure mode is chosen explicitly
        check_bind(settings.server.host, auth_enabled=settings.auth.enabled,
                   insecure=settings.auth.insecure)
    except ConfigError as exc:
        _print_config_errors(exc)
        raise typer.Exit(2) from None
    sock = _bind(settings.server.host, settings.server.port, settings.server.backlog)
    with sock:  # closed however serve ends, start-up failures included
        _check_store(settings)
        try:
            runtime, observability = assemble(settings, agents)
        except ConfigError as exc:
            _print_config_errors(exc)
            raise typer.Exit(2) from None
        observability.configure_logging()
        names = ", ".join(a.name for a in agents)
        bound_port = sock.getsockname()[1]
        errors.print(f"[bold]roost[/] serving [cyan]{escape(names)}[/] on http://"
                     f"{settings.server.host}:{bound_port} (store {escape(_redact(settings.store.url))}"
                     "; docs at /docs)")
        run_server(runtime, observability, host=settings.server.host, port=bound_port,
                   log_level=log_level.value, sock=sock)


@contextlib.asynccontextmanager
async def _runtime(settings: Settings, agents: list[Any]) -> AsyncIterator[Any]:
    from roost.runtime.runtime import Runtime

    runtime = Runtime(settings, agents)
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
    agent: Annotated[str, typer.Argument(metavar="AGENT",
                                         help="agent name, or an agent file")],
    message: Annotated[str, typer.Argument(metavar="MESSAGE", help="the user's message")],
    load: LoadOption = None,
    config: ConfigOption = None,
    store: StoreOption = None,
    session: Annotated[str | None, typer.Option(metavar="ID",
                                                help="continue this session id")] = None,
    timeout: Annotated[float | None, typer.Option(metavar="SECONDS",
                                                  help="turn timeout in seconds")] = None,
) -> None:
    """Run one turn and stream the answer to the terminal."""
    settings = _settings(config, store)
    agents, name = _one_agent(settings, agent, load or [])

    async def main() -> int:
        async with _runtime(settings, agents) as runtime:
            session_id = session or (await runtime.create_session("default", name)).id
            code = await _turn(runtime, session_id, message, timeout)
            errors.print(f"[dim]session {session_id}[/]")
            return code

    raise typer.Exit(_guard(main))


@app.command()
def chat(
    agent: Annotated[str, typer.Argument(metavar="AGENT",
                                         help="agent name, or an agent file")],
    load: LoadOption = None,
    config: ConfigOption = None,
    store: StoreOption = None,
    session: Annotated[str | None, typer.Option(metavar="ID",
                                                help="continue this session id")] = None,
) -> None:
    """Talk to an agent in a REPL that keeps its session (Ctrl-D, Ctrl-C or /quit to leave)."""
    settings = _settings(config, store)
    agents, name = _one_agent(settings, agent, load or [])
    history = _line_editing()

    async def main() -> int:
        async with _runtime(settings, agents) as runtime:
            session_id = session or (await runtime.create_session("default", name)).id
            errors.print(f"[dim]session {session_id} — /quit to leave[/]")
            while True:
                # input() on the loop's own thread, not an executor's: Ctrl-C interrupts it
                # (a worker blocked in input() kept the process alive until Enter), and no
                # run is active while the user types, so nothing waits on the loop.
                line = _prompt()
                if line is None or line.strip() in ("/quit", "/exit"):
                    return 0
                if line.strip():
                    await _turn(runtime, session_id, line, None)

    try:
        raise typer.Exit(_guard(main))
    finally:
        history()


def _line_editing() -> Any:
    """readline's line editing and a history file (~/.roost_history); returns the saver."""
    try:
        import readline
    except ImportError:  # pragma: no cover - no readline on this platform
        return lambda: None
    path = Path.home() / ".roost_history"
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)

    return save


def _prompt() -> str | None:
    try:
        return input("you> ")
    except EOFError:
        return None
    except KeyboardInterrupt:
        errors.print()
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
    agent: Annotated[str | None, typer.Option(metavar="NAME",
                                              help="only this agent's sessions")] = None,
    user_id: Annotated[str | None, typer.Option(metavar="ID",
                                                help="only this user's sessions")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, metavar="N")] = 50,
    cursor: Annotated[str | None, typer.Option(
        metavar="CURSOR", help="the next page: the cursor the previous page printed")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object: items, next_cursor")
                       ] = False,
    tenant: Annotated[str, typer.Option(metavar="TENANT")] = "default",
    config: ConfigOption = None,
    store: StoreOption = None,
) -> None:
    """List sessions, newest first."""
    settings = _settings(config, store)
    try:
        page = asyncio.run(_with_store(settings, lambda s: s.list_sessions(
            tenant, agent=agent, user_id=user_id, cursor=cursor, limit=limit)))
    except RoostError as exc:
        errors.print(f"[red]{exc.type}[/]: {escape(exc.message)}")
        raise typer.Exit(1) from None
    if as_json:
        items = [{"id": s.id, "agent": s.agent, "user_id": s.user_id, "version": s.version,
                  "events": s.last_seq, "created_at": _iso(s.created_at),
                  "updated_at": _iso(s.updated_at)} for s in page.items]
        body = {"items": items, "next_cursor": page.next_cursor}
        sys.stdout.write(msgspec.json.encode(body).decode() + "\n")
        return
    table = Table("agent", "user", "version", "events", "updated", box=None)
    # Ids are what `show` and `delete` take: never truncate them, even through a pipe.
    table.columns.insert(0, Column("id", no_wrap=True, min_width=36))
    for s in page.items:
        table.add_row(s.id, s.agent, s.user_id or "", str(s.version), str(s.last_seq),
                      _iso(s.updated_at))
    # Through a pipe rich would wrap to 80 columns: measure the table at its natural width.
    wide = Console(width=10_000) if not console.is_terminal else console
    wide.print(table, crop=False, overflow="ignore")
    if page.next_cursor:
        errors.print(f"[dim]more: --cursor {escape(page.next_cursor)}[/]")


def _iso(ts: float) -> str:
    """An ISO 8601 timestamp in UTC with its zone, e.g. 2026-12-04T20:41:07Z."""
    stamp = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


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
    config: Annotated[Path | None, typer.Argument(metavar="[FILE]",
                                                  help="roost.toml or roost.yaml")] = None,
) -> None:
    """Validate a config file and ROOST_* variables as serve would: every problem, with its key
    path (agent files load, [agents.NAME] sections match agents, models resolve)."""
    from roost.config import config_path
    from roost.config_check import check

    path = config_path(config)
    errors.print(f"[dim]reading {escape(str(path)) if path else 'no config file (defaults)'}"
                 " and ROOST_* variables[/]")
    settings = _settings(config)
    problems, warnings = check(settings)
    for key, message in warnings:
        errors.print(f"[yellow]warning[/]: {escape(key)}: {escape(message)}")
    if problems:
        _print_config_errors(ConfigError("invalid configuration", problems))
        raise typer.Exit(2)
    console.print(f"[green]ok[/]: store {escape(_redact(settings.store.url))}, "
                  f"{len(settings.providers)} providers, {len(settings.models)} model aliases, "
                  f"{len(settings.agents)} agent sections")


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the config file (for editor completion and validation)."""
    schema = Settings.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Roost configuration (roost.toml / roost.yaml)"
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(schema)).decode() + "\n")


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(metavar="[DIR]",
                                              help="where to create the project")] = Path("."),
) -> None:
    """Start a project: an agent, a commented roost.toml and a test, ready for roost serve
    and pytest."""
    from roost.scaffold import scaffold

    try:
        written = scaffold(directory)
    except FileExistsError as exc:
        errors.print(f"[red]error[/]: would overwrite {escape(str(exc))}")
        raise typer.Exit(1) from None
    for path in written:
        console.print(f"created {escape(str(path))}", highlight=False)
    where = "" if directory == Path(".") else f"cd {directory} && "
    console.print(f"next: {escape(where)}roost serve   (or: pytest, roost chat assistant)",
                  highlight=False)


@app.command()
def bench(
    url: Annotated[str | None, typer.Option(metavar="URL", help="load a running deployment "
                                            "instead of starting one (no CPU/RSS then)")] = None,
    agent: Annotated[str, typer.Option(metavar="NAME", help="agent to talk to")] = "weather",
    sessions: Annotated[int, typer.Option(min=1, metavar="N")] = 100,
    turns: Annotated[int, typer.Option(min=1, metavar="N", help="turns per session")] = 3,
    concurrency: Annotated[int, typer.Option(min=1, metavar="N", help="clients")] = 32,
    latency_ms: Annotated[float, typer.Option(min=0, metavar="MS",
                                              help="the mock model's latency per call")] = 50.0,
    warmup: Annotated[int, typer.Option(min=0, metavar="N", help="warm-up sessions")] = 20,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Measure this machine: the reference scenario against the mock model (CPU per turn,
    turns/s, p50/p99 against the floor, RSS, errors), or --url a deployment."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from roost import bench as benchmark

    bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=errors, transient=True)

    def progress(total: int) -> Any:
        task = bar.add_task("turns", total=total)
        return lambda: bar.advance(task)

    if not url:
        errors.print(f"[dim]starting the mock model ({latency_ms:g} ms per call) and a server "
                     "with the weather example…[/]")
    try:
        with bar:
            result = benchmark.run(url=url, agent=agent, sessions=sessions, turns=turns,
                                   concurrency=concurrency, latency_ms=latency_ms,
                                   warmup_sessions=warmup, store=store, progress=progress)
    except (ImportError, RuntimeError) as exc:
        errors.print(f"[red]error[/]: {escape(str(exc))}")
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(msgspec.json.encode(result.as_dict()).decode() + "\n")
    else:
        rows = {
            "turns": f"{result.turns} ({result.errors} errors)",
            "turns/s": f"{result.turns_per_s:g}",
            "latency p50": f"{result.p50_ms:g} ms",
            "latency p99": f"{result.p99_ms:g} ms" + (
                f" ({result.p99_over_floor:g}x the {result.floor_ms:g} ms floor)"
                if result.floor_ms else ""),
            "server CPU/turn": (f"{result.cpu_ms_per_turn:g} ms"
                                if result.cpu_ms_per_turn is not None else "n/a"),
            "server RSS": f"{result.rss_mib:g} MiB" if result.rss_mib is not None else "n/a",
        }
        for key, value in rows.items():
            console.print(f"{key:>16}  {value}", highlight=False)
        for error in result.first_errors:
            errors.print(f"[red]error[/]: {escape(error)}")
    raise typer.Exit(1 if result.errors else 0)


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
