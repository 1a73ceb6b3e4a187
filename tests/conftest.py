"""Shared test helpers: real services on loopback, skipped with a reason off CI, required on CI."""

from __future__ import annotations

import os
import socket

import pytest

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get("ROOST_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ROOST_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def service_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (off CI) or fail (on CI) when a real service is not listening."""
    if service_reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if ON_CI:
        pytest.fail(f"{message}; CI=true requires it")
    pytest.skip(f"{message}; start it to run these tests")
