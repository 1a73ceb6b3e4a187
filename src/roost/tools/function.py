"""`@tool`: a typed Python function as a tool.

    @tool
    async def get_weather(city: str, unit: Literal["C", "F"] = "C") -> dict:
        '''Current weather for a city.

        Args:
            city: City name, e.g. "Paris".
            unit: Temperature unit.
        '''

The JSON schema comes from the type hints (Pydantic) and the docstring (summary and
Google-style `Args:`); arguments are validated before the call. Sync functions run in the
agent's own bounded thread pool (`limits.tool_threads`, see tools/threads.py) so they never
block the event loop nor starve other agents. A parameter annotated `ToolContext` receives
the call's context and is hidden from the model. `@tool(requires_approval=True)` makes every
call wait for a person's decision before it runs (see `roost.engine.approval`).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, get_type_hints, overload

import orjson
import pydantic

from roost.tools.base import ToolArgumentsError, ToolContext
from roost.tools.threads import TOOL_THREADS

_ARG_LINE = re.compile(r"^\s{2,}(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a docstring into its description and per-argument descriptions (Google style)."""
    if not doc:
        return "", {}
    doc = inspect.cleandoc(doc)
    lines = doc.splitlines()
    description: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        if stripped.rstrip(":").lower() in ("args", "arguments", "parameters") and stripped.endswith(":"):
            section = "args"
            continue
        if stripped.endswith(":") and stripped[:-1].lower() in ("returns", "raises", "yields", "examples", "example"):
            section = "other"
            continue
        if section == "args":
            match = _ARG_LINE.match("  " + line if not line.startswith(" ") else line)
            if match and not line.startswith("      "):
                current = match.group(1).lstrip("*")
                args[current] = match.group(2).strip()
            elif current and stripped:
                args[current] = f"{args[current]} {stripped}".strip()
        elif section is None:
            description.append(line)
    return "\n".join(description).strip(), args


def _result_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump_json()
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_DATACLASS).decode()
    except TypeError:
        return str(value)


class FunctionTool:
    """A tool backed by a Python function. Build it with `@tool` or `FunctionTool(fn)`."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
        untrusted: bool = False,
        requires_approval: bool = False,
    ) -> None:
        self.fn = fn
        # Its results come from outside (web pages, mail, other people's text): the
        # prompt-injection guardrail checks them (roost.guardrails.injection).
        self.untrusted = untrusted
        self.requires_approval = requires_approval
        self.name = name or fn.__name__
        if not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", self.name):
            raise ValueError(f"tool name {self.name!r} must match [a-zA-Z0-9_-]{{1,64}}")
        doc_description, arg_docs = _parse_docstring(fn.__doc__)
        self.description = description or doc_description or self.name
        self.timeout_s = timeout_s
        self.is_async = inspect.iscoroutinefunction(fn)
        self._context_param: str | None = None

        hints = get_type_hints(fn, include_extras=True)
        fields: dict[str, Any] = {}
        for param in inspect.signature(fn).parameters.values():
            annotation = hints.get(param.name, Any)
            if annotation is ToolContext:
                self._context_param = param.name
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {self.name}: *args/**kwargs are not supported")
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (
                annotation,
                pydantic.Field(default, description=arg_docs.get(param.name)),
            )
        self.arguments_model: type[pydantic.BaseModel] = pydantic.create_model(
            f"{self.name}_arguments",
            __config__=pydantic.ConfigDict(extra="forbid"),
            **fields,
        )
        schema = self.arguments_model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        schema.setdefault("properties", {})
        self.parameters: dict[str, Any] = schema

    def __repr__(self) -> str:
        return f"FunctionTool({self.name!r})"

    def validate(self, arguments: str) -> dict[str, Any]:
        """Parse and validate the model's JSON arguments; raise `ToolArgumentsError`."""
        try:
            parsed = self.arguments_model.model_validate_json(arguments or "{}")
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
                for err in exc.errors(include_url=False)
            )
            raise ToolArgumentsError(f"invalid arguments for {self.name}: {problems}") from None
        # Keep the validated objects (not model_dump): a nested model stays a model.
        return {name: getattr(parsed, name) for name in self.arguments_model.model_fields}

    async def call(self, arguments: str, ctx: ToolContext) -> str:
        kwargs = self.validate(arguments)
        if self._context_param:
            kwargs[self._context_param] = ctx
        if self.is_async:
            result = await self.fn(**kwargs)
        else:
            # Never the loop's default executor: the agent's own bounded pool (tools/threads.py).
            result = await TOOL_THREADS.run(ctx.agent, ctx.tool_threads,
                                            functools.partial(self.fn, **kwargs))
        return _result_text(result)


@overload
def tool(fn: Callable[..., Any], /) -> FunctionTool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout_s: float | None = None,
    untrusted: bool = False,
    requires_approval: bool = False,
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
    untrusted: bool = False,
    requires_approval: bool = False,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Turn a typed function (sync or async) into a tool. Usable bare or with options;
    `untrusted=True` marks results written by third parties (see roost.guardrails)."""

    def wrap(f: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(f, name=name, description=description, timeout_s=timeout_s,
                            untrusted=untrusted, requires_approval=requires_approval)

    return wrap(fn) if fn is not None else wrap
