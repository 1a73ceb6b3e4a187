"""Which ticks a schedule fires when an instance looks at it: the normal case, ticks within
the grace, and the catch-up policies for ticks missed while every instance was down."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from roost.background.records import Schedule
from roost.background.scheduler import check_cron, check_timezone, next_tick, plan
from roost.errors import InvalidInput

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def minutely(catch_up: str = "skip", last_tick: float | None = T0) -> Schedule:
    return Schedule(id="s", agent="a", cron="* * * * *", input="x", catch_up=catch_up,  # type: ignore[arg-type]
                    created_at=T0 - 1, last_tick=last_tick)


def test_nothing_before_the_next_tick_then_that_tick() -> None:
    assert plan(minutely(), T0 + 30, 5) == ([], T0 + 60)
    assert plan(minutely(), T0 + 62, 5) == ([T0 + 60], T0 + 120)


def test_ticks_within_the_grace_all_fire() -> None:
    every_second = Schedule(id="s", agent="a", cron="* * * * * *", input="x",
                            created_at=T0 - 1, last_tick=T0)
    assert plan(every_second, T0 + 3.5, 5) == ([T0 + 1, T0 + 2, T0 + 3], T0 + 4)


@pytest.mark.parametrize("catch_up,fired", [("skip", []), ("run_once", [T0 + 3600 * 5])])
def test_ticks_missed_while_down_follow_the_catch_up_policy(catch_up: str,
                                                            fired: list[float]) -> None:
    # Down from T0 to five hours and 30 s later: 300 ticks missed.
    clock = T0 + 3600 * 5 + 30
    ticks, after = plan(minutely(catch_up), clock, 5)
    assert ticks == fired
    assert after == T0 + 3600 * 5 + 60


def test_a_new_schedule_starts_from_its_creation() -> None:
    assert plan(minutely(last_tick=None), T0 + 10, 5) == ([], T0 + 60)


def test_time_zones_and_validation() -> None:
    paris = Schedule(id="s", agent="a", cron="0 9 * * *", timezone="Europe/Paris", input="x")
    nine = datetime.fromtimestamp(next_tick(paris, T0), tz=check_timezone("Europe/Paris"))
    assert (nine.hour, nine.minute) == (9, 0)
    for bad in ("", "* * *", "61 * * * *", "0 0 31 2 *", "* * * * * * * *"):
        with pytest.raises(InvalidInput):
            check_cron(bad)
    with pytest.raises(InvalidInput):
        check_timezone("Mars/Olympus")
