"""`roost webhooks secret show|rotate`: a tenant's signing secret, from the terminal.

    roost webhooks secret show [--tenant acme]      # created on first use
    roost webhooks secret rotate [--tenant acme]    # prints the new one

Running servers sign with a rotated secret from their next attempt on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import typer
from rich.console import Console

from roost.auth.cli import ConfigOption, StoreOption
from roost.background.cli import TenantOption
from roost.errors import RoostError
from roost.sessions.records import DEFAULT_TENANT
from roost.webhooks.secrets import rotate, secret_of
from roost.webhooks.store import WebhookStore, open_webhook_store

webhooks_app = typer.Typer(help="Webhook signing secrets.", no_args_is_help=True)
secret_app = typer.Typer(help="Show or rotate a tenant's signing secret.",
                         no_args_is_help=True)
webhooks_app.add_typer(secret_app, name="secret")
errors = Console(stderr=True)


def _run(config: object, store_url: str | None,
         action: Callable[[WebhookStore], Awaitable[str]]) -> str:
    from roost.cli import _settings

    settings = _settings(config, store_url)  # type: ignore[arg-type]
    if settings.store.url.startswith("memory://"):
        errors.print("[red]a secret in a memory:// store vanishes with this process[/]: "
                     "configure store.url")
        raise typer.Exit(2)
    store = open_webhook_store(settings.store.url, **settings.store.options)

    async def go() -> str:
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except RoostError as exc:
        errors.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None


@secret_app.command("show")
def show(tenant: TenantOption = DEFAULT_TENANT, config: ConfigOption = None,
         store: StoreOption = None) -> None:
    """Print the tenant's secret (creating it if it has none)."""
    typer.echo(_run(config, store, lambda s: secret_of(s, tenant)))


@secret_app.command("rotate")
def rotate_command(tenant: TenantOption = DEFAULT_TENANT, config: ConfigOption = None,
                   store: StoreOption = None) -> None:
    """Replace the tenant's secret and print the new one."""
    typer.echo(_run(config, store, lambda s: rotate(s, tenant)))
