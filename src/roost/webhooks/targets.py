"""Where a webhook may point. Checked when a run is given one (→ 422 naming the field) and
again, on the resolved addresses, before every attempt: a name that resolved to a public
address at submission may point at 169.254.169.254 later (SSRF). The check-then-connect gap
(DNS rebinding within the resolver's TTL) is closed by connecting to the address checked."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from roost.errors import InvalidInput
from roost.webhooks.config import WebhooksConfig

MAX_URL = 2048


class TargetRefused(Exception):
    """The URL, or an address it resolves to, is not allowed."""


def check_url(url: str, config: WebhooksConfig, *, field: str = "webhook.url") -> SplitResult:
    """The parsed URL, or InvalidInput naming `field`."""
    if len(url) > MAX_URL:
        raise InvalidInput(f"the URL is longer than {MAX_URL} characters", field=field)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise InvalidInput(f"not a URL: {exc}", field=field) from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInput("the URL must be http or https", field=field)
    if not parts.hostname:
        raise InvalidInput("the URL has no host", field=field)
    if parts.username or parts.password:
        raise InvalidInput("the URL must not carry credentials", field=field)
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost"):
        if not config.allow_loopback:
            raise InvalidInput("loopback receivers are not allowed "
                               "(webhooks.allow_loopback)", field=field)
        return parts
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return parts  # a name: checked on its addresses before each attempt
    reason = refusal(address, config)
    if reason is not None:
        raise InvalidInput(reason, field=field)
    return parts


def refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
            config: WebhooksConfig) -> str | None:
    """Why `address` may not be a receiver, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None if config.allow_loopback else (
            "loopback receivers are not allowed (webhooks.allow_loopback)")
    if address.is_unspecified or address.is_multicast:
        return f"{address} cannot receive webhooks"
    if (address.is_private or address.is_link_local or address.is_reserved) \
            and not config.allow_private:
        return (f"{address} is a private or reserved address "
                "(webhooks.allow_private)")
    return None


async def resolve_checked(host: str, port: int, config: WebhooksConfig) -> str:
    """One allowed address of `host`; TargetRefused when it has none."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetRefused(f"cannot resolve {host}: {exc}") from None
    reasons = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        reason = refusal(address, config)
        if reason is None:
            return str(address)
        reasons.append(reason)
    raise TargetRefused(reasons[0] if reasons else f"{host} has no address")
