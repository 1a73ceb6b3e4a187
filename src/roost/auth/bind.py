"""The safe default: without authentication Roost serves loopback only."""

from __future__ import annotations

import ipaddress

from roost.errors import ConfigError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, *, auth_enabled: bool, insecure: bool) -> None:
    """Raise `ConfigError` when `host` would expose an unauthenticated server."""
    if auth_enabled or insecure or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to serve {host} without authentication: anyone who can reach it could "
        "act as any tenant. Enable auth (auth.enabled = true, then `roost keys create`), "
        "bind 127.0.0.1, or set auth.insecure = true if something in front of Roost "
        "authenticates every request",
        [("auth.enabled", f"refusing to serve the non-loopback address {host} without "
                          "authentication: set auth.enabled = true (and create keys with "
                          "`roost keys create`), bind 127.0.0.1, or set auth.insecure = true "
                          "when a proxy in front authenticates every request")])
