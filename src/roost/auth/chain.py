"""The authenticator chain of one server: API keys, then OIDC tokens, with their stores,
caches and background work (the last-used flush) owned by the app's lifespan.

    auth = Auth.from_settings(settings)
    await auth.start()
    principal = await auth.authenticate(token)   # Principal | None
    await auth.close()
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import TYPE_CHECKING

from roost.auth.apikeys import ApiKeyAuthenticator
from roost.auth.config import AuthConfig
from roost.auth.keys import PREFIX, KeyStore, open_key_store
from roost.auth.principal import Principal

if TYPE_CHECKING:
    from roost.auth.oidc import OIDCAuthenticator
    from roost.config import Settings


class Auth:
    def __init__(self, config: AuthConfig, keys: KeyStore,
                 tenant_header: str | None = None) -> None:
        self.config = config
        self.keys = keys
        self.api_keys = ApiKeyAuthenticator(keys, config.api_keys)
        self.oidc: OIDCAuthenticator | None = None
        if config.oidc is not None:
            try:
                from roost.auth.oidc import OIDCAuthenticator
            except ImportError as exc:  # pragma: no cover - depends on the environment
                from roost.errors import ConfigError

                raise ConfigError("OIDC needs PyJWT: pip install 'roost[oidc]'",
                                  [("auth.oidc", str(exc))]) from exc
            self.oidc = OIDCAuthenticator(config.oidc, cache_ttl_s=config.api_keys.cache_ttl_s,
                                          cache_max_entries=config.api_keys.cache_max_entries)
        self.tenant_header = tenant_header.lower().encode("latin-1") if tenant_header else None
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies]
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, keys: KeyStore | None = None) -> Auth:
        config = settings.auth
        if keys is None:
            url = config.api_keys.url or settings.store.url
            keys = open_key_store(url, **settings.store.options)
        return cls(config, keys, settings.server.tenant_header)

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    async def start(self) -> None:
        if self.enabled:
            await self.keys.open()
            self._flusher = asyncio.create_task(self.api_keys.run_flusher(),
                                                name="roost-auth-last-used")

    async def close(self) -> None:
        """Stop the flusher, write the last-used times it had not written, close the store."""
        flusher, self._flusher = self._flusher, None
        try:
            if flusher is not None:
                flusher.cancel()
                try:
                    await flusher
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # we are being cancelled ourselves, not just our flusher
                await self.api_keys.flush_quietly()
        finally:
            await self.keys.close()

    async def authenticate(self, token: str) -> Principal | None:
        if token.startswith(PREFIX):
            return await self.api_keys.authenticate(token)
        if self.oidc is not None and token.count(".") == 2:
            return await self.oidc.authenticate(token)
        return None

    def trusted_proxy(self, client: tuple[str, int] | None) -> bool:
        if not self._proxies or client is None:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in network for network in self._proxies)
