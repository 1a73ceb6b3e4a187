"""Model references: an unknown one says what to write instead."""

from __future__ import annotations

import pytest

from roost.errors import ConfigError
from roost.models.registry import ModelRegistry


@pytest.mark.parametrize(("ref", "suggestion"), [("gpt-4o-mini", "'openai:gpt-4o-mini'"),
                                                 ("claude-sonnet-4", "'anthropic:claude-sonnet-4'")])
def test_an_unknown_bare_model_suggests_provider_model(ref: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ModelRegistry().resolve(ref)
    assert f"did you mean {suggestion}?" in caught.value.message
    assert suggestion in caught.value.problems[0][1]
