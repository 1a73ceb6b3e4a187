"""`roost keys create|list|revoke`: API keys in the configured store, from the terminal.

    roost keys create --tenant acme --role operator --name ci --expires 90d
    roost keys list [--tenant acme]
    roost keys revoke <key id>
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Column, Table

from roost.auth.keys import KeyStore, new_key, open_key_store
from roost.auth.principal import Role

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)

T = TypeVar("T")
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c",
                                                   help="roost.toml or roost.yaml")]
StoreOption = Annotated[str | None, typer.Option("--store", help="store URL, e.g. sqlite:///x.db")]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """`90d`, `12h`, `30m`, `3600s`, `2w` (or bare seconds) → seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None or float(match[1]) <= 0:
        raise typer.BadParameter("use a positive duration such as 90d, 12h, 30m")
    return float(match[1]) * _UNITS[match[2] or "s"]


def _run(config: Path | None, store: str | None, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    from roost.cli import _settings

    settings = _settings(config, store)
    url = settings.auth.api_keys.url or settings.store.url
    if url.startswith("memory://"):
        errors.print("[red]keys in a memory:// store vanish with this process[/]: "
                     "configure store.url (or auth.api_keys.url)")
        raise typer.Exit(2)
    keys = open_key_store(url, **settings.store.options)

    async def go() -> T:
        await keys.open()
        try:
            return await action(keys)
        finally:
            await keys.close()

    return asyncio.run(go())


@keys_app.command("create")
def create(
    tenant: Annotated[str, typer.Option(help="the tenant the key acts in")],
    role: Annotated[str, typer.Option(help="admin, operator, user or viewer")],
    name: Annotated[str, typer.Option(help="what the key is for, e.g. ci")],
    expires: Annotated[str | None, typer.Option(help="lifetime, e.g. 90d (default: none)")] = None,
    user_id: Annotated[str | None, typer.Option(help="the user the key acts as")] = None,
    day_tokens: Annotated[int | None, typer.Option(min=0, help="the key's own budget: "
                                                   "tokens per UTC day")] = None,
    day_cost: Annotated[float | None, typer.Option(min=0, help="spend per UTC day")] = None,
    month_tokens: Annotated[int | None, typer.Option(min=0, help="tokens per UTC "
                                                     "month")] = None,
    month_cost: Annotated[float | None, typer.Option(min=0, help="spend per UTC month")] = None,
    config: ConfigOption = None,
    store: StoreOption = None,
) -> None:
    """Create a key and print its secret (shown only this once). A key may carry its own
    budget (refused with 429 budget_exceeded once spent), besides its tenant's."""
    if role not in ("admin", "operator", "user", "viewer"):
        raise typer.BadParameter("admin, operator, user or viewer", param_hint="--role")
    ttl = parse_duration(expires) if expires else None
    role_: Role = role  # type: ignore[assignment]  # checked above
    limits = {"day_tokens": day_tokens, "day_cost": day_cost, "month_tokens": month_tokens,
              "month_cost": month_cost}
    budget = {k: v for k, v in limits.items() if v is not None} or None
    key, token = new_key(tenant, role_, name, user_id=user_id, ttl_s=ttl, budget=budget)
    _run(config, store, lambda keys: keys.add(key))
    errors.print(f"created key [cyan]{key.id}[/] ({role} of {tenant}); its secret, shown once:")
    print(token)


@keys_app.command("list")
def list_(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None,
    config: ConfigOption = None,
    store: StoreOption = None,
) -> None:
    """List keys (never their secrets)."""
    keys = _run(config, store, lambda k: k.list(tenant))
    table = Table("tenant", "role", "name", "user", "created", "expires", "last used", "status",
                  "budget")
    table.columns.insert(0, Column("id", no_wrap=True))
    now = time.time()
    for k in keys:
        status = "revoked" if k.revoked_at else ("expired" if not k.usable(now) else "active")
        table.add_row(k.id, k.tenant, k.role, k.name, k.user_id or "", _when(k.created_at),
                      _when(k.expires_at), _when(k.last_used_at), status,
                      ", ".join(f"{n}={v:g}" for n, v in (k.budget or {}).items()))
    console.print(table)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id (from `roost keys list`)")],
    config: ConfigOption = None,
    store: StoreOption = None,
) -> None:
    """Revoke a key: refused by every instance within auth.api_keys.cache_ttl_s."""
    if not _run(config, store, lambda k: k.revoke(key_id, time.time())):
        errors.print(f"[red]no active key {key_id}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


def _when(at: Any) -> str:
    if at is None:
        return ""
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds")
