"""Transport limits and TLS: what the HTTP server enforces before a request reaches the app.

    [transport]
    header_timeout_s = 10          # a request's headers must be complete within this
    keep_alive_s = 5               # an idle keep-alive connection is closed after this
    max_connections_per_client = 0  # per client address; 0: no cap (set it when clients
                                   # connect directly, not through one load balancer address)
    cors_origins = []              # CORS off unless origins are listed ("*" for any)
    security_headers = true
    tls_certfile = "/etc/roost/tls.crt"
    tls_keyfile = "/etc/roost/tls.key"
    tls_client_ca = "/etc/roost/clients-ca.crt"   # require client certificates signed by it

uvicorn closes idle keep-alive connections, but not one that trickles its headers a byte at a
time (slow-loris) or connects and says nothing: `guarded_protocol` arms a timer when a
connection opens and when each request begins, and disarms it when the headers are
complete; when it fires the connection is closed. The same protocol counts connections per
client address and closes those over the cap at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections import Counter
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from starlette.types import ASGIApp


class TransportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    header_timeout_s: float = Field(10.0, gt=0, description="close a connection whose request "
                                    "headers are not complete within this (slow-loris)")
    keep_alive_s: float = Field(5.0, gt=0, description="close idle keep-alive connections")
    max_connections_per_client: int = Field(0, ge=0, description="open connections per client "
                                            "address (0: no cap)")
    cors_origins: list[str] = Field(default_factory=list)
    security_headers: bool = True
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    tls_keyfile_password_env: str | None = None
    tls_client_ca: str | None = Field(None, description="require client certificates "
                                      "signed by this CA")
    trusted_proxies: list[str] = Field(default_factory=list, description="peers (CIDRs or "
                                       "addresses) whose X-Forwarded-For / Forwarded name "
                                       "the client (roost.server.forwarded)")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        from roost.server.forwarded import parse_networks

        parse_networks(value)
        return value


def uvicorn_options(config: TransportConfig) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config` that apply `config`."""
    import os

    # proxy_headers off: uvicorn would trust X-Forwarded-For from 127.0.0.1 by default;
    # roost.server.forwarded honours it from transport.trusted_proxies only.
    options: dict[str, Any] = {"http": guarded_protocol(config),
                               "timeout_keep_alive": config.keep_alive_s,
                               "proxy_headers": False}
    if config.tls_certfile:
        options["ssl_certfile"] = config.tls_certfile
        options["ssl_keyfile"] = config.tls_keyfile
        if config.tls_keyfile_password_env:
            options["ssl_keyfile_password"] = os.environ.get(config.tls_keyfile_password_env)
        if config.tls_client_ca:
            options["ssl_ca_certs"] = config.tls_client_ca
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def guarded_protocol(config: TransportConfig) -> type:
    """uvicorn's httptools protocol with a header-read timeout and a per-client cap."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    header_timeout_s = config.header_timeout_s
    cap = config.max_connections_per_client
    # A trusted proxy's connections carry many clients: ForwardedClient caps each
    # client's requests in flight instead.
    proxies = [ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies]

    def is_proxy(host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in proxies)
    open_by_client: Counter[str] = Counter()

    class GuardedHttpProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _counted: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if cap:
                host = self.client[0] if self.client else ""
                if proxies and is_proxy(host):
                    self._arm()
                    return
                if open_by_client[host] >= cap:
                    transport.close()
                    return
                open_by_client[host] += 1
                self._counted = host
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._counted is not None:
                open_by_client[self._counted] -= 1
                if open_by_client[self._counted] <= 0:
                    del open_by_client[self._counted]
                self._counted = None
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedHttpProtocol


_SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                     (b"referrer-policy", b"no-referrer"),
                     (b"cross-origin-resource-policy", b"same-origin")]
_HSTS = (b"strict-transport-security", b"max-age=31536000")


class SecurityHeaders:
    """Adds the usual response headers (and HSTS over TLS) to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [*_SECURITY_HEADERS, _HSTS] if scope.get("scheme") == "https" \
            else _SECURITY_HEADERS

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def harden(app: ASGIApp, config: TransportConfig) -> ASGIApp:
    """`app` behind the configured security headers and CORS (outermost: a preflight has
    no credentials, so it is answered before authentication)."""
    if config.security_headers:
        app = SecurityHeaders(app)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app = CORSMiddleware(app, allow_origins=config.cors_origins,
                             allow_methods=["GET", "POST", "PATCH", "DELETE"],
                             allow_headers=["authorization", "x-api-key", "content-type",
                                            "if-match", "last-event-id", "idempotency-key"],
                             expose_headers=["x-run-id", "location", "etag", "x-request-id",
                                             "retry-after"])
    return app
