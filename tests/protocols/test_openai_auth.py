"""401 and 403 from the auth edge reach the official `openai` client as its own exception
classes (AuthenticationError, PermissionDeniedError), and another tenant's agent is 404."""

from __future__ import annotations

import httpx
import openai
import pytest

from roost.server.app import create_app
from tests.auth.conftest import Secured, secured  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(30)


def client_of(app: Secured, api_key: str) -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=create_app(app.runtime, auth=app.auth))
    return openai.AsyncOpenAI(base_url="http://roost/v1", api_key=api_key, max_retries=0,
                              http_client=httpx.AsyncClient(transport=transport))


async def test_auth_errors_are_the_sdks_exception_classes(secured: Secured) -> None:  # noqa: F811
    message = [{"role": "user", "content": "hi"}]
    async with client_of(secured, "rk_not_a_key") as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.models.list()
    viewer_token = secured.tokens[("viewer", "acme")]
    async with client_of(secured, viewer_token) as viewer:
        assert [m.id async for m in viewer.models.list()] == ["echo"]
        with pytest.raises(openai.PermissionDeniedError):
            await viewer.chat.completions.create(model="echo", messages=message)  # type: ignore[arg-type]
    async with client_of(secured, secured.tokens[("user", "acme")]) as user:
        answer = await user.chat.completions.create(model="echo", messages=message)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "hi there"
        response = await user.responses.create(model="echo", input="hi")
    async with client_of(secured, secured.tokens[("user", "globex")]) as other:
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(response.id)
