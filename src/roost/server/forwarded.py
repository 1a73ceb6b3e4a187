"""The real client behind trusted proxies: `X-Forwarded-For` / `Forwarded` (RFC 7239).

    [transport]
    trusted_proxies = ["10.0.0.0/8", "192.168.1.7"]   # load balancers, ingress controllers

A request whose TCP peer is in `trusted_proxies` names its client in these headers; anyone
else could write them, so from any other peer they are ignored. The client is found the way
proxies append to the header: read it right to left, skip every address that is itself a
trusted proxy (a chain of them), and the first one that is not is the client. `Forwarded`
wins over `X-Forwarded-For` when both are sent; `X-Forwarded-Proto` (or `proto=`) sets the
scheme. A header that cannot be parsed leaves the peer as the client.

What follows: `scope["client"]` is the real client for everything inside (the audit log,
the access log, metrics), and `scope["roost.peer"]` keeps the TCP peer, which is what
`auth.trusted_proxies` (may name the tenant) is checked against. Connections from a trusted
proxy carry many clients, so `transport.max_connections_per_client` does not cap them per
connection; behind a proxy it caps each client's requests in flight instead (429
`too_many_requests` over the cap).

uvicorn's own proxy-header handling (which trusts 127.0.0.1 by default) is turned off in
`uvicorn_options`: this middleware is the one place that decides.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from roost.server.problems import problem

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PEER = "roost.peer"


def parse_networks(entries: Iterable[str]) -> list[Network]:
    """CIDRs or single addresses; ValueError naming a bad one."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
    return networks


class ForwardedClient:
    def __init__(self, app: ASGIApp, trusted_proxies: Iterable[str], *,
                 max_in_flight_per_client: int = 0) -> None:
        self.app = app
        self.networks = parse_networks(trusted_proxies)
        self.cap = max_in_flight_per_client
        self._in_flight: Counter[str] = Counter()
        self._trusted_cache: dict[str, bool] = {}

    def trusted(self, address: str) -> bool:
        known = self._trusted_cache.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                known = False
            else:
                known = any(ip in network for network in self.networks)
            if len(self._trusted_cache) > 10_000:
                self._trusted_cache.clear()
            self._trusted_cache[address] = known
        return known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        if scope["type"] not in ("http", "websocket") or not peer or not self.trusted(peer[0]):
            await self.app(scope, receive, send)
            return
        scope[PEER] = peer
        forwarded = xff = proto = None
        for name, value in scope["headers"]:
            if name == b"forwarded":
                forwarded = value.decode("latin-1") if forwarded is None else (
                    forwarded + "," + value.decode("latin-1"))
            elif name == b"x-forwarded-for":
                xff = value.decode("latin-1") if xff is None else (
                    xff + "," + value.decode("latin-1"))
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1").split(",")[-1].strip().lower()
        hops: list[str] = []
        if forwarded is not None:
            hops, forwarded_proto = _forwarded_hops(forwarded)
            proto = forwarded_proto or proto
        elif xff is not None:
            hops = [h.strip() for h in xff.split(",")]
        client = self._client_of(hops)
        if client is not None:
            scope["client"] = (client, 0)
        if proto in ("http", "https") and scope["type"] == "http":
            scope["scheme"] = proto
        if not self.cap or client is None:
            await self.app(scope, receive, send)
            return
        if self._in_flight[client] >= self.cap:
            await problem(429, "too_many_requests", "this client has too many requests in "
                          "flight", retry_after=1)(scope, receive, send)
            return
        self._in_flight[client] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._in_flight[client] -= 1
            if self._in_flight[client] <= 0:
                del self._in_flight[client]

    def _client_of(self, hops: list[str]) -> str | None:
        """The rightmost address that is not a trusted proxy (None: no usable address)."""
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                return None  # garbage where an address should be: trust nothing to its left
            if not self.trusted(address):
                return address
        # Every hop is a trusted proxy: the leftmost is the nearest we know to the client.
        return _address(hops[0]) if hops else None


def _address(hop: str) -> str | None:
    """An address from a header entry: `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]:80`,
    `2001:db8::1`; None for anything else (`unknown`, obfuscated names)."""
    hop = hop.strip().strip('"')
    if hop.startswith("["):
        hop = hop[1:].partition("]")[0]
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


def _forwarded_hops(header: str) -> tuple[list[str], str | None]:
    """The `for=` of every element of a `Forwarded` header, and the last `proto=`."""
    hops: list[str] = []
    proto = None
    for element in header.split(","):
        for pair in element.split(";"):
            key, _, value = pair.strip().partition("=")
            key = key.strip().lower()
            if key == "for":
                hops.append(value)
            elif key == "proto":
                proto = value.strip().strip('"').lower()
    return hops, proto
