"""Outbound proxies for model calls: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`.

The variables mean what they mean to curl and requests (either case; the standard library's
`urllib.request` reads them): `HTTPS_PROXY=http://proxy:3128` for https URLs, `NO_PROXY` a
comma-separated list of hosts and domain suffixes that go direct (`*`: all).

Every proxied connection is a CONNECT tunnel (RFC 9110 §9.3.6), for http URLs too: the proxy
sees only the host and port, TLS runs end to end inside the tunnel, and the pooled connection
then speaks to the model server exactly as a direct one does.

    proxy = proxy_for("https", "api.openai.com", 443)          # None: go direct
    sock = await open_tunnel(proxy, "api.openai.com", 443)      # connected, past the CONNECT
    await loop.create_connection(factory, sock=sock, ssl=context, server_hostname=host)
"""

from __future__ import annotations

import asyncio
import base64
import socket
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

_MAX_HEAD = 16 * 1024


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    authorization: str | None = None  # a Proxy-Authorization value, from the URL's user:pass

    @classmethod
    def from_url(cls, url: str) -> Proxy:
        if "://" not in url:
            url = "http://" + url  # HTTPS_PROXY=proxy:3128 is common
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"unsupported proxy {url!r}: use http://host:port")
        authorization = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            authorization = f"Basic {token}"
        return cls(parts.hostname, parts.port or 80, authorization)


def environment_proxies() -> dict[str, str]:
    """The proxy variables now set (scheme or "no" → value), as `urllib.request` reads them."""
    return urllib.request.getproxies_environment()


def proxy_for(scheme: str, host: str, port: int,
              proxies: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy a request to scheme://host:port goes through, or None for a direct one."""
    proxies = environment_proxies() if proxies is None else proxies
    url = proxies.get(scheme) or proxies.get("all")
    if not url:
        return None
    # proxy_bypass_environment: public, documented by its docstring, missing from typeshed.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if proxies.get("no") and bypass(f"{host}:{port}", dict(proxies)):
        return None
    return Proxy.from_url(url)


class ProxyError(ConnectionError):
    """The proxy could not be reached, or refused the tunnel (its status in the message)."""


async def open_tunnel(proxy: Proxy, host: str, port: int) -> socket.socket:
    """A non-blocking socket to `proxy`, tunnelled to host:port (the proxy answered 2xx)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            await _connect(loop, sock, proxy, host, port)
            return sock
        except ProxyError:
            sock.close()
            raise
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            error = exc
    raise ProxyError(f"cannot reach the proxy {proxy.host}:{proxy.port}: {error}")


async def _connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, proxy: Proxy,
                   host: str, port: int) -> None:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.authorization:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head = b""
    # Read byte-wise past the blank line at most: what follows belongs to the tunnel (the
    # TLS handshake), and a proxy sends nothing more before the client speaks.
    while not head.endswith(b"\r\n\r\n"):
        chunk = await loop.sock_recv(sock, 1)
        if not chunk:
            raise ProxyError(f"the proxy {proxy.host}:{proxy.port} closed the connection "
                             "during CONNECT")
        head += chunk
        if len(head) > _MAX_HEAD:
            raise ProxyError(f"the proxy {proxy.host}:{proxy.port} sent an oversized answer")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit() or not 200 <= int(parts[1]) < 300:
        raise ProxyError(f"the proxy {proxy.host}:{proxy.port} refused CONNECT {authority}: "
                         f"{status_line}")
