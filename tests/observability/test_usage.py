"""Prices and usage aggregation."""

from __future__ import annotations

import calendar
import contextlib

import pytest
from pydantic import ValidationError

from roost.errors import InvalidInput
from roost.observability import ModelPrice, ObservabilityConfig, PriceTable, aggregate
from roost.sessions.records import RunRecord, Usage

TABLE = PriceTable({
    "openai:gpt-4o": ModelPrice(input=2.5, output=10),
    "openai:gpt-4o-mini": ModelPrice(input=0.15, output=0.6),
    "claude-sonnet-4": ModelPrice(input=3, output=15),
})


@pytest.mark.parametrize(("model", "expected"), [
    ("openai:gpt-4o", 2.5),
    ("gpt-4o", 2.5),                              # bare name
    ("gpt-4o-mini-2024-07-18", 0.15),             # dated snapshot: longest prefix wins
    ("openai:gpt-4o-2024-08-06", 2.5),
    ("anthropic:claude-sonnet-4", 3),             # key without provider
    ("claude-sonnet-4-20250514", 3),
    ("gpt-4", None),                              # a prefix of a key is not a match
    ("gpt-4omni", None),                          # only at a "-" boundary
    ("", None),
])
def test_price_resolution(model: str, expected: float | None) -> None:
    price = TABLE.price(model)
    assert (price.input if price else None) == expected
    assert TABLE.price(model) is price  # cached


def test_cost() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=2_000)
    assert TABLE.cost("openai:gpt-4o-mini", usage) == pytest.approx(0.15 + 0.0012)
    assert TABLE.cost("unknown-model", usage) == 0.0
    assert not PriceTable() and TABLE


def test_prices_from_config() -> None:
    config = ObservabilityConfig.model_validate(
        {"prices": {"openai:gpt-4o": {"input": 2.5, "output": 10}}})
    assert config.prices["openai:gpt-4o"].output == 10
    with pytest.raises(ValidationError):
        ObservabilityConfig.model_validate({"prices": {"m": {"input": -1, "output": 1}}})
    with pytest.raises(ValidationError):
        ObservabilityConfig.model_validate({"metric": True})  # a typo is an error
    assert ObservabilityConfig.model_validate({"log_level": "INFO"}).log_level == "info"
    with pytest.raises(ValidationError):
        ObservabilityConfig.model_validate({"log_level": "loud"})


def run(run_id: str, *, tenant: str = "acme", agent: str = "support", when: str = "2025-01-31 10",
        tokens: tuple[int, int] = (100, 10), cost: float = 0.01, model: str | None = None) -> RunRecord:
    created = calendar.timegm(
        (int(when[:4]), int(when[5:7]), int(when[8:10]), int(when[11:13]), 0, 0, 0, 0, 0))
    record = RunRecord(id=run_id, session_id="s", tenant=tenant, agent=agent,
                       created_at=float(created),
                       usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1], cost=cost))
    if model is not None:
        # RunRecord has no `model` field yet: such runs group as "unknown".
        with contextlib.suppress(AttributeError):
            record.model = model  # type: ignore[attr-defined,unused-ignore]
    return record


RUNS = [
    run("1", tenant="acme", agent="support", when="2025-01-31 10"),
    run("2", tenant="acme", agent="support", when="2025-01-31 11", tokens=(50, 5), cost=0.5),
    run("3", tenant="acme", agent="sales", when="2025-02-01 09"),
    run("4", tenant="globex", agent="support", when="2025-02-01 23"),
]


def test_aggregate_by_tenant_and_agent() -> None:
    groups = aggregate(RUNS, group_by=("tenant", "agent"))
    assert [(g.key, g.runs) for g in groups] == [
        ({"tenant": "acme", "agent": "sales"}, 1),
        ({"tenant": "acme", "agent": "support"}, 2),
        ({"tenant": "globex", "agent": "support"}, 1),
    ]
    support = groups[1]
    assert (support.input_tokens, support.output_tokens, support.total_tokens) == (150, 15, 165)
    assert support.cost == pytest.approx(0.51)


def test_aggregate_time_range_and_day_buckets() -> None:
    since = calendar.timegm((2025, 1, 31, 11, 0, 0, 0, 0, 0))
    until = calendar.timegm((2025, 2, 1, 23, 0, 0, 0, 0, 0))
    groups = aggregate(RUNS, group_by=("day",), since=since, until=until)
    assert [(g.key["day"], g.runs) for g in groups] == [("2025-01-31", 1), ("2025-02-01", 1)]
    (total,) = aggregate(RUNS, group_by=())
    assert total.key == {} and total.runs == 4
    assert aggregate([], group_by=("tenant",)) == []


def test_aggregate_by_model_reads_the_run_model_when_present() -> None:
    runs = [run("1", model="openai:gpt-4o"), run("2", model="openai:gpt-4o"), run("3")]
    groups = {g.key["model"]: g.runs for g in aggregate(runs, group_by=("model",))}
    if hasattr(RunRecord, "model") and "model" in RunRecord.__struct_fields__:
        assert groups == {"openai:gpt-4o": 2, "unknown": 1}
    else:
        assert groups == {"unknown": 3}


def test_aggregate_rejects_unknown_keys() -> None:
    with pytest.raises(InvalidInput) as info:
        aggregate(RUNS, group_by=("tenant", "colour"))
    assert info.value.field == "group_by"
    with pytest.raises(InvalidInput):
        aggregate(RUNS, group_by=("tenant", "tenant"))
