"""`roost schedules list|create|delete`: schedules in the configured store, from the terminal.

    roost schedules create --agent reporter --cron "0 9 * * 1-5" --timezone Europe/Paris \\
        --input "Write the daily report" [--tenant acme] [--session ses_…] [--catch-up run_once]
    roost schedules list [--tenant acme] [--agent reporter]
    roost schedules delete <schedule id> [--tenant acme]

Running servers see a change at their next re-read (`background.schedules_refresh_s`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from roost.auth.cli import ConfigOption, StoreOption
from roost.background.records import Schedule
from roost.background.scheduler import check_cron, check_timezone, plan
from roost.background.store import BackgroundStore, open_background_store
from roost.errors import RoostError
from roost.runtime.handle import new_id
from roost.sessions import open_store
from roost.sessions.records import DEFAULT_TENANT, now
from roost.sessions.store import Store

schedules_app = typer.Typer(help="Create, list and delete schedules (cron runs).",
                            no_args_is_help=True)
console = Console()
errors = Console(stderr=True)
T = TypeVar("T")
TenantOption = Annotated[str, typer.Option(help="the tenant")]


def _run(config: object, store_url: str | None,
         action: Callable[[Store, BackgroundStore], Awaitable[T]]) -> T:
    from roost.cli import _settings

    settings = _settings(config, store_url)  # type: ignore[arg-type]
    if settings.store.url.startswith("memory://"):
        errors.print("[red]schedules in a memory:// store vanish with this process[/]: "
                     "configure store.url")
        raise typer.Exit(2)
    store = open_store(settings.store.url, **settings.store.options)
    background = open_background_store(settings.store.url, store, **settings.store.options)

    async def go() -> T:
        await store.open()
        await background.open()
        try:
            return await action(store, background)
        finally:
            await background.close()
            await store.close()

    try:
        return asyncio.run(go())
    except RoostError as exc:
        field = getattr(exc, "field", None)
        errors.print(f"[red]{exc}[/]" + (f" ({field})" if field else ""))
        raise typer.Exit(1) from None


@schedules_app.command("create")
def create(
    agent: Annotated[str, typer.Option(help="the agent each run talks to")],
    cron: Annotated[str, typer.Option(help="five fields, or six with seconds last")],
    input: Annotated[str, typer.Option("--input", help="the message each run starts with")],
    timezone: Annotated[str, typer.Option(help="IANA time zone")] = "UTC",
    tenant: TenantOption = DEFAULT_TENANT,
    session: Annotated[str | None, typer.Option(help="run every tick in this session "
                                                "(default: a new session per tick)")] = None,
    catch_up: Annotated[str, typer.Option(help="skip or run_once")] = "skip",
    paused: Annotated[bool, typer.Option(help="create it paused")] = False,
    config: ConfigOption = None,
    store: StoreOption = None,
) -> None:
    """Create a schedule and print its id."""
    if catch_up not in ("skip", "run_once"):
        raise typer.BadParameter("skip or run_once", param_hint="--catch-up")
    try:
        cron = check_cron(cron)
        check_timezone(timezone)
    except RoostError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"--{getattr(exc, 'field', 'cron')}"
                                 ) from None

    async def action(sessions: Store, background: BackgroundStore) -> Schedule:
        if session is not None:
            found = await sessions.get_session(tenant, session)
            if found.agent != agent:
                raise typer.BadParameter(f"{session} is a session of {found.agent!r}",
                                         param_hint="--session")
        schedule = Schedule(id=new_id("sch"), tenant=tenant, agent=agent, cron=cron,
                            timezone=timezone, input=input,
                            session_policy="fixed" if session else "new", session_id=session,
                            enabled=not paused, catch_up=catch_up)  # type: ignore[arg-type]
        await background.put_schedule(schedule)
        return schedule

    schedule = _run(config, store, action)
    console.print(schedule.id)


@schedules_app.command("list")
def list_(
    tenant: TenantOption = DEFAULT_TENANT,
    agent: Annotated[str | None, typer.Option(help="only this agent's")] = None,
    config: ConfigOption = None,
    store: StoreOption = None,
) -> None:
    """List a tenant's schedules with their next fire time."""
    async def action(sessions: Store, background: BackgroundStore) -> list[Schedule]:
        return await background.list_schedules(tenant, agent)

    table = Table("id", "agent", "cron", "timezone", "session", "enabled", "next fire (UTC)")
    for s in _run(config, store, action):
        ticks, after = plan(s, now(), 5.0)
        nxt = (ticks[0] if ticks else after) if s.enabled else None
        table.add_row(s.id, s.agent, s.cron, s.timezone, s.session_id or "new", str(s.enabled),
                      dt.datetime.fromtimestamp(nxt, dt.UTC).isoformat(timespec="seconds")
                      if nxt else "-")
    console.print(table)


@schedules_app.command("delete")
def delete(
    schedule_id: Annotated[str, typer.Argument(help="the schedule's id")],
    tenant: TenantOption = DEFAULT_TENANT,
    config: ConfigOption = None,
    store: StoreOption = None,
) -> None:
    """Delete a schedule (runs it already started are kept)."""
    async def action(sessions: Store, background: BackgroundStore) -> bool:
        return await background.delete_schedule(tenant, schedule_id)

    if not _run(config, store, action):
        errors.print(f"[red]no schedule {schedule_id} in tenant {tenant}[/]")
        raise typer.Exit(1)
    console.print(f"deleted {schedule_id}")
