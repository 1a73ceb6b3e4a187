"""Signatures, as the Standard Webhooks spec (https://www.standardwebhooks.com) defines them:

    webhook-id: whd_…                      (the delivery id: the same on every attempt)
    webhook-timestamp: 1733356800          (seconds since the epoch, of this attempt)
    webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">

keyed by the tenant's secret (`whsec_` + base64 of 32 random bytes). Receivers verify with
any Standard Webhooks library (`standardwebhooks` on PyPI: `Webhook(secret).verify(body,
headers)`) or by hand (docs/webhooks.md). Signing uses that same library."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from standardwebhooks import Webhook


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, delivery_id: str, timestamp: float, body: bytes) -> dict[str, str]:
    """The headers of one attempt."""
    when = datetime.fromtimestamp(int(timestamp), tz=UTC)
    return {"webhook-id": delivery_id, "webhook-timestamp": str(int(timestamp)),
            "webhook-signature": Webhook(secret).sign(delivery_id, when, body)}


def verify(secret: str, body: bytes, headers: dict[str, str]) -> None:
    """For receivers written in Python: raises `standardwebhooks.WebhookVerificationError`
    unless the headers sign `body` with `secret` (and the timestamp is within 5 minutes)."""
    Webhook(secret).verify(body, headers, json_parse=False)
