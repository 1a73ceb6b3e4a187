"""`python -m roost`: the same as the `roost` command."""

from roost.cli import app

app(prog_name="roost")
