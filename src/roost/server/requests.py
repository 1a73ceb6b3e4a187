"""Request bodies parsed with orjson: strict JSON (no NaN/Infinity, no lone surrogates), and
faster than the standard library on the hot path; a body that is not declared JSON is a 415.
Routers use `StrictJSONRoute`."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from roost.errors import UnsupportedMediaType


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # orjson.JSONDecodeError subclasses json.JSONDecodeError: FastAPI maps it to a
            # json_invalid validation error, which becomes a 400 problem.
            self._json = orjson.loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def strict(request: Request) -> Response:
            strict_request = StrictJSONRequest(request.scope, request.receive)
            # The body is read once and kept on strict_request for the handler; an absent
            # optional body needs no type.
            if (takes_body and not is_json(request.headers.get("content-type"))
                    and await strict_request.body()):
                raise UnsupportedMediaType(
                    "the body must be JSON: send Content-Type: application/json")
            return await handler(strict_request)

        return strict


def is_json(content_type: str | None) -> bool:
    """application/json, or a +json type (application/merge-patch+json), any parameters."""
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                            and media.endswith("+json"))
