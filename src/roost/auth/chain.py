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
import logging
from typing import TYPE_CHECKING

from roost.auth.apikeys import ApiKeyAuthenticator
from roost.auth.audit import AuditTrail
from roost.auth.auditlog import AuditStore, open_audit_store
from roost.auth.config import AuthConfig
from roost.auth.keybudgets import KeyBudgets, KeySpendStore, open_key_spend
from roost.auth.keys import PREFIX, KeyStore, open_key_store
from roost.auth.principal import Principal

if TYPE_CHECKING:
    from roost.auth.oidc import OIDCAuthenticator
    from roost.config import Settings


class Auth:
    def __init__(self, config: AuthConfig, keys: KeyStore,
                 tenant_header: str | None = None, audit_store: AuditStore | None = None,
                 spend: KeySpendStore | None = None) -> None:
        self.config = config
        self.keys = keys
        self.audit = AuditTrail(audit_store, log_records=config.audit == "log",
                                flush_s=config.audit_flush_s,
                                retention_s=config.audit_retention_s)
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
        self.key_budgets: KeyBudgets | None = None
        if config.enabled and spend is not None:
            self.key_budgets = KeyBudgets(spend, refresh_s=config.budgets.refresh_s,
                                          flush_s=config.budgets.key_flush_s)
        self.tenant_header = tenant_header.lower().encode("latin-1") if tenant_header else None
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies]
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_settings(cls, settings: Settings, keys: KeyStore | None = None) -> Auth:
        config = settings.auth
        url = config.api_keys.url or settings.store.url
        if keys is None:
            keys = open_key_store(url, **settings.store.options)
        # With auth off everyone is the anonymous admin on loopback: the log is the trail.
        audit = (open_audit_store(url, **settings.store.options)
                 if config.enabled and config.audit_store else None)
        # Keys' own budgets keep a spend ledger beside the keys (keybudgets/).
        spend = open_key_spend(url, **settings.store.options) if config.enabled else None
        return cls(config, keys, settings.server.tenant_header, audit, spend)

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    async def start(self) -> None:
        if self.enabled:
            await self.keys.open()
            self._tasks.append(asyncio.create_task(self.api_keys.run_flusher(),
                                                   name="roost-auth-last-used"))
        if self.key_budgets is not None:
            await self.key_budgets.store.open()
            self._tasks.append(asyncio.create_task(self.key_budgets.run_flusher(),
                                                   name="roost-auth-key-spend"))
        if self.audit.store is not None:
            await self.audit.store.open()
            self._tasks.append(asyncio.create_task(self.audit.run(), name="roost-audit"))

    async def close(self) -> None:
        """Stop the flushers, write what they had not written, close the stores."""
        tasks, self._tasks = self._tasks, []
        try:
            for task in tasks:
                task.cancel()
            for task in tasks:
                try:
                    await task
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # we are being cancelled ourselves, not just our tasks
            if tasks:
                await self.api_keys.flush_quietly()
                if self.key_budgets is not None:
                    try:
                        await self.key_budgets.flush()
                    except Exception:
                        logging.getLogger("roost.auth").warning(
                            "could not record API keys' spend", exc_info=True)
                try:
                    await self.audit.flush()
                except Exception:
                    logging.getLogger("roost.auth").warning("could not write the audit trail",
                                                            exc_info=True)
        finally:
            await self.keys.close()
            if self.key_budgets is not None:
                await self.key_budgets.store.close()
            if self.audit.store is not None:
                await self.audit.store.close()

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
