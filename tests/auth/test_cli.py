"""`roost keys create|list|revoke` and the loopback-only default of `roost serve`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from roost.auth.bind import check_bind, is_loopback
from roost.auth.cli import parse_duration
from roost.auth.keys import digest, key_id_of
from roost.auth.keystores.sqlite import SQLiteKeyStore
from roost.cli import app
from roost.errors import ConfigError


def roost(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/roost.db"
    created = roost("keys", "create", "--tenant", "acme", "--role", "operator", "--name", "ci",
                    "--expires", "90d", "--store", store)
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    key_id = key_id_of(token)
    assert key_id is not None

    async def stored() -> tuple[str, float | None, float]:
        keys = SQLiteKeyStore(f"{tmp_path}/roost.db")
        key = await keys.get(key_id)
        await keys.close()
        assert key is not None
        return key.hash, key.expires_at, key.created_at

    hash_, expires_at, created_at = asyncio.run(stored())
    assert hash_ == digest(token) and token not in (tmp_path / "roost.db").read_bytes().decode(
        "latin-1")
    assert expires_at == pytest.approx(created_at + 90 * 86400)

    listed = roost("keys", "list", "--store", store)
    assert listed.exit_code == 0 and key_id in listed.stdout and "active" in listed.stdout
    assert token not in listed.stdout
    assert roost("keys", "revoke", key_id, "--store", store).exit_code == 0
    assert "revoked" in roost("keys", "list", "--tenant", "acme", "--store", store).stdout
    assert roost("keys", "revoke", key_id, "--store", store).exit_code == 1


def test_keys_refuse_a_bad_role_and_a_memory_store(tmp_path: Path) -> None:
    bad = roost("keys", "create", "--tenant", "a", "--role", "root", "--name", "x",
                "--store", f"sqlite:///{tmp_path}/r.db")
    assert bad.exit_code != 0
    assert roost("keys", "list", "--store", "memory://").exit_code == 2


def test_durations() -> None:
    assert parse_duration("90d") == 90 * 86400
    assert parse_duration("12h") == 12 * 3600 and parse_duration("30") == 30
    with pytest.raises(typer.BadParameter):
        parse_duration("forever")


def test_without_auth_only_loopback_is_served() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2", "[::1]"):
        assert is_loopback(host)
        check_bind(host, auth_enabled=False, insecure=False)
    for host in ("0.0.0.0", "::", "10.1.2.3", "roost.example.com"):
        assert not is_loopback(host)
        with pytest.raises(ConfigError, match="auth.enabled = true"):
            check_bind(host, auth_enabled=False, insecure=False)
        check_bind(host, auth_enabled=True, insecure=False)
        check_bind(host, auth_enabled=False, insecure=True)


def test_serve_refuses_a_public_address_without_auth_and_names_the_fix() -> None:
    result = roost("serve", "--host", "0.0.0.0", "--store", "memory://")
    assert result.exit_code == 2
    assert "auth.enabled = true" in result.output and "auth.insecure" in result.output
