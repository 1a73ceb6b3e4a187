"""`roost webhooks secret show|rotate` against a SQLite store."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from roost.cli import app


def test_webhook_secret_show_and_rotate(tmp_path: Path) -> None:
    runner = CliRunner()
    store = ["--store", f"sqlite:///{tmp_path}/roost.db"]
    shown = runner.invoke(app, ["webhooks", "secret", "show", "--tenant", "acme", *store])
    assert shown.exit_code == 0, shown.output
    first = shown.output.strip()
    assert first.startswith("whsec_")
    again = runner.invoke(app, ["webhooks", "secret", "show", "--tenant", "acme", *store])
    assert again.output.strip() == first
    rotated = runner.invoke(app, ["webhooks", "secret", "rotate", "--tenant", "acme", *store])
    assert rotated.exit_code == 0 and rotated.output.strip() not in ("", first)
    other = runner.invoke(app, ["webhooks", "secret", "show", "--tenant", "globex", *store])
    assert other.output.strip() not in (first, rotated.output.strip())
    memory = runner.invoke(app, ["webhooks", "secret", "show", "--store", "memory://"])
    assert memory.exit_code == 2
