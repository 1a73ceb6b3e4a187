"""Fallback chain: when a model fails, the next one serves.

    model = FallbackModel([RetryModel(BreakerModel(primary)), secondary])

Any `ModelError` hands the request on — an outage, a rate limit, an open circuit, a context
overflow (the next model may have a larger window) — except the caller's own mistakes
(`bad_request`, `auth`; configurable). Two exceptions to handing on:

* text was already streamed from the failing model: the consumer has shown it, and a second
  model would start a different answer, so the error is raised (marked not retryable);
* the request deadline has passed: nobody can answer in time.

The final `ModelResponse.model` names the model that answered (`served_by` counts them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from roost.errors import ModelError
from roost.models.base import Model, ModelRequest, ModelResponse, StreamItem, TextDelta
from roost.models.wrappers.base import (
    close_model,
    error_kind,
    mark_streamed,
    output_already_streamed,
)
from roost.models.wrappers.config import FallbackConfig


class FallbackModel:
    """Tries `models` in order until one answers.

    Statistics: `calls`, `fallbacks` (hand-overs to a next model), `failures` (calls no model
    answered), `served_by` (answers per model name).
    """

    def __init__(
        self,
        models: Sequence[Model],
        config: FallbackConfig | None = None,
        *,
        name: str | None = None,
    ) -> None:
        if not models:
            raise ValueError("FallbackModel needs at least one model")
        self.models = list(models)
        self.config = config or FallbackConfig()
        self.name = name or self.models[0].name
        self.calls = 0
        self.fallbacks = 0
        self.failures = 0
        self.served_by: dict[str, int] = {}

    def should_fall_back(self, error: ModelError) -> bool:
        return (
            error_kind(error) not in self.config.no_fallback_kinds
            and not output_already_streamed(error)
        )

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamItem, None]:
        self.calls += 1
        errors: list[tuple[str, ModelError]] = []
        for index, model in enumerate(self.models):
            if index > 0:
                if request.deadline is not None and asyncio.get_running_loop().time() >= request.deadline:
                    break
                self.fallbacks += 1
            streamed = False
            try:
                async with aclosing(model.stream(request)) as items:
                    async for item in items:
                        if isinstance(item, TextDelta):
                            streamed = True
                        elif isinstance(item, ModelResponse):
                            if not item.model:
                                item.model = model.name
                            self.served_by[model.name] = self.served_by.get(model.name, 0) + 1
                        yield item
                return
            except ModelError as error:
                if streamed:
                    self.failures += 1
                    raise mark_streamed(error) from error
                if not self.should_fall_back(error):
                    self.failures += 1
                    raise
                errors.append((model.name, error))
        self.failures += 1
        raise _all_failed(errors)

    async def aclose(self) -> None:
        for model in self.models:
            await close_model(model)


def _all_failed(errors: list[tuple[str, ModelError]]) -> ModelError:
    if not errors:  # the deadline passed before the first model could be tried again
        return ModelError("deadline passed before a fallback model could serve", kind="deadline")
    if len(errors) == 1:
        return errors[0][1]
    last = errors[-1][1]
    summary = "; ".join(f"{name}: {error.message}" for name, error in errors)
    retry_afters = [e.retry_after for _, e in errors if e.retry_after is not None]
    combined = ModelError(
        f"all {len(errors)} models failed: {summary}",
        status_code=last.status_code,
        retryable=any(e.retryable for _, e in errors),
        retry_after=min(retry_afters) if retry_afters else None,
        provider=last.provider,
        kind=last.kind,
    )
    combined.__cause__ = last
    return combined
