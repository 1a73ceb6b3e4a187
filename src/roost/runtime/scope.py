"""The user a request acts as, when `auth.user_scoped` hides other users' sessions from it.

The native routes are scoped at the auth edge, which knows their path parameters. The
protocol adapters (OpenAI `X-Roost-Session-Id`, Responses `previous_response_id`, A2A
context and task ids, MCP `session_id`) carry session and run ids inside their bodies, so
the edge cannot see them: for those requests it sets `ACTING_USER`, and the runtime's own
lookups (`get_session`, `get_run`, `live_run`, `cancel_run`, a turn's session, a new
session's owner) honour it — another user's session or run is not found, exactly like an
unknown id. A context variable, so it follows the request into the tasks it starts
(the MCP server's, a run's) and never into another request.

    token = ACTING_USER.set("u-42")
    try:
        ...                     # runtime calls made here see only u-42's sessions
    finally:
        ACTING_USER.reset(token)
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Final

from roost.sessions.records import Session


class _Unscoped:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSCOPED"


UNSCOPED: Final = _Unscoped()

ACTING_USER: ContextVar[str | None | _Unscoped] = ContextVar("roost_acting_user",
                                                              default=UNSCOPED)


def hidden(session: Session) -> bool:
    """True when the acting user may not see `session` (never when unscoped)."""
    user = ACTING_USER.get()
    return user is not UNSCOPED and session.user_id != user


def owner_for_new() -> str | None | _Unscoped:
    """The user id a new session must carry (UNSCOPED: whatever the caller asked)."""
    return ACTING_USER.get()
