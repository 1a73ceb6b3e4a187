"""`ask_user`: the built-in tool a run uses to ask its user a question and wait for the answer.

    from roost import Agent
    from roost.tools.ask_user import ask_user

    planner = Agent(name="planner", model="demo", tools=[ask_user])

A call never runs this function: the engine pauses the run before it (status `waiting`,
events `approval.required` with `kind: "question"` and `run.waiting`), and the answer posted
to `POST /v1/runs/{id}/approvals` (`{"answer": "…"}`) becomes the tool's result, on whichever
instance receives it. In roost.toml, `builtin_tools = ["ask_user"]` adds it to an agent.
"""

from __future__ import annotations

from roost.tools.function import FunctionTool


def _ask_user(question: str) -> str:
    """Ask the user a question and wait for their answer. Use it when you need information
    or a choice only the user can give.

    Args:
        question: The question, in the user's language, answerable in a few words.
    """
    raise RuntimeError("ask_user is answered by a person, never executed")


class AskUserTool(FunctionTool):
    """The `ask_user` tool: `asks_user` tells the engine to wait for a person's answer."""

    asks_user = True


ask_user = AskUserTool(_ask_user, name="ask_user")
