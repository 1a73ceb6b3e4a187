"""`roost schedules create|list|delete` against a SQLite store."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from roost.cli import app


def test_schedules_create_list_delete(tmp_path: Path) -> None:
    runner = CliRunner()
    store = ["--store", f"sqlite:///{tmp_path}/roost.db"]
    created = runner.invoke(app, ["schedules", "create", "--agent", "weather", "--cron",
                                  "0 9 * * 1-5", "--timezone", "Europe/Paris", "--input",
                                  "Daily weather", *store])
    assert created.exit_code == 0, created.output
    schedule_id = created.output.strip()
    assert schedule_id.startswith("sch_")
    listed = runner.invoke(app, ["schedules", "list", *store], env={"COLUMNS": "300"})
    assert listed.exit_code == 0 and schedule_id in listed.output
    bad = runner.invoke(app, ["schedules", "create", "--agent", "weather", "--cron", "x",
                              "--input", "y", *store])
    assert bad.exit_code == 2 and "cron" in bad.output
    assert runner.invoke(app, ["schedules", "delete", schedule_id, *store]).exit_code == 0
    assert runner.invoke(app, ["schedules", "delete", schedule_id, *store]).exit_code == 1
