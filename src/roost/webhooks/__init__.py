"""Signed webhook deliveries when a run ends (see docs/webhooks.md)."""
