"""The protocol routes in the app's OpenAPI document.

The protocol adapters are plain ASGI in front of FastAPI (`mount.py`), so FastAPI does not
see them; this module describes them: the OpenAI-compatible routes with their request and
response shapes (the parts Roost reads and writes; OpenAI's own reference has the rest),
`/mcp` and the A2A JSON-RPC endpoint as what they are on the wire (their payloads are the
MCP and A2A specifications', not restated here), and the agent cards. `/mcp` and A2A are
listed only when their extras are installed, as they are served only then.

`auth/openapi.py` then adds the security schemes and each operation's permission, from the
same permission table as every other route (`permissions.PROTOCOL_ROUTES`).

    add_protocol_paths(app, mcp=True, a2a=True)   # before auth's declare_security(app)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

_JSON = "application/json"
_SSE = "text/event-stream"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors() -> dict[str, Any]:
    """OpenAI's error shape for 4XX and 5XX (the official SDKs map the status to their
    exception classes; see docs/protocols.md)."""
    body = {"content": {_JSON: {"schema": _ref("OpenAIError")}}}
    return {"4XX": {"description": "the request was refused (OpenAI's error shape)", **body},
            "5XX": {"description": "overloaded (with Retry-After), unavailable, or the run "
                                   "failed (OpenAI's error shape)", **body}}


_SESSION_HEADER = {
    "name": "X-Roost-Session-Id", "in": "header", "required": False,
    "description": "continue this Roost session instead of a stateless turn",
    "schema": {"type": "string"}}

_RUN_HEADERS = {
    "X-Roost-Session-Id": {"description": "the session the turn ran in",
                           "schema": {"type": "string"}},
    "X-Run-Id": {"description": "the run", "schema": {"type": "string"}}}

SCHEMAS: dict[str, Any] = {
    "OpenAIError": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["message", "type"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": ["string", "null"]},
                           "code": {"type": ["string", "null"]}}}}},
    "Model": {
        "type": "object", "required": ["id", "object", "created", "owned_by"],
        "properties": {"id": {"type": "string", "description": "an agent's name"},
                       "object": {"const": "model"}, "created": {"type": "integer"},
                       "owned_by": {"type": "string"}}},
    "ModelList": {
        "type": "object", "required": ["object", "data"],
        "properties": {"object": {"const": "list"},
                       "data": {"type": "array", "items": _ref("Model")}}},
    "ChatCompletionRequest": {
        "type": "object", "required": ["model", "messages"],
        "description": "OpenAI's request; sampling parameters are accepted and ignored (the "
                       "agent has its own), `n` must be 1, client `tools` are refused.",
        "properties": {
            "model": {"type": "string", "description": "the agent"},
            "messages": {"type": "array", "items": {
                "type": "object", "required": ["role"],
                "properties": {"role": {"enum": ["system", "developer", "user", "assistant"]},
                               "content": {"anyOf": [{"type": "string"}, {"type": "array"},
                                                     {"type": "null"}]}}}},
            "stream": {"type": "boolean", "default": False},
            "stream_options": {"type": ["object", "null"], "properties": {
                "include_usage": {"type": "boolean"}}},
            "n": {"type": ["integer", "null"]}},
        "additionalProperties": True},
    "ChatCompletion": {
        "type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": "chat.completion"},
            "created": {"type": "integer"}, "model": {"type": "string"},
            "choices": {"type": "array", "items": {
                "type": "object", "required": ["index", "message", "finish_reason"],
                "properties": {"index": {"type": "integer"},
                               "finish_reason": {"type": "string"},
                               "message": {"type": "object", "properties": {
                                   "role": {"const": "assistant"},
                                   "content": {"type": "string"}}}}}},
            "usage": _ref("CompletionUsage")}},
    "CompletionUsage": {
        "type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
        "properties": {"prompt_tokens": {"type": "integer"},
                       "completion_tokens": {"type": "integer"},
                       "total_tokens": {"type": "integer"}}},
    "ResponseRequest": {
        "type": "object", "required": ["model", "input"],
        "description": "OpenAI's Responses request; `instructions` and client `tools` are "
                       "refused (the agent has its own).",
        "properties": {
            "model": {"type": "string", "description": "the agent"},
            "input": {"anyOf": [{"type": "string"},
                                {"type": "array", "items": {"type": "object"}}]},
            "previous_response_id": {"type": ["string", "null"],
                                     "description": "continue that run's session"},
            "stream": {"type": "boolean", "default": False}},
        "additionalProperties": True},
    "Response": {
        "type": "object", "required": ["id", "object", "created_at", "model", "status", "output"],
        "description": "a run as a Response (`id` is the run id)",
        "properties": {
            "id": {"type": "string"}, "object": {"const": "response"},
            "created_at": {"type": "number"}, "model": {"type": "string"},
            "status": {"enum": ["completed", "failed", "cancelled", "incomplete", "queued",
                                "in_progress"]},
            "output": {"type": "array", "items": {"type": "object"}},
            "previous_response_id": {"type": ["string", "null"]},
            "metadata": {"type": "object", "properties": {
                "roost_session_id": {"type": "string"}}},
            "usage": {"type": ["object", "null"]}}},
    "JSONRPCRequest": {
        "type": "object", "required": ["jsonrpc", "method"],
        "properties": {"jsonrpc": {"const": "2.0"}, "id": {"type": ["string", "integer"]},
                       "method": {"type": "string"}, "params": {"type": "object"}}},
    "JSONRPCResponse": {
        "type": "object", "required": ["jsonrpc"],
        "properties": {"jsonrpc": {"const": "2.0"}, "id": {"type": ["string", "integer",
                                                                     "null"]},
                       "result": {}, "error": {"type": "object"}}},
    "AgentCard": {
        "type": "object", "required": ["name", "supportedInterfaces"],
        "description": "an A2A agent card (A2A 1.0)",
        "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                       "supportedInterfaces": {"type": "array", "items": {"type": "object"}},
                       "skills": {"type": "array", "items": {"type": "object"}}}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _openai_paths() -> dict[str, Any]:
    turn_ok = {"description": "the answer; streamed (`stream: true`) as OpenAI's server-sent "
                              "events, ending `data: [DONE]` for chat completions",
               "headers": _RUN_HEADERS}
    return {
        "/v1/models": {"get": {
            "operationId": "listModels", "tags": ["openai"], "summary": "The agents as models",
            "responses": {"200": _json(_ref("ModelList"), "the caller's agents"),
                          **_errors()}}},
        "/v1/models/{model}": {"get": {
            "operationId": "getModel", "tags": ["openai"], "summary": "An agent as a model",
            "parameters": [{"name": "model", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": _json(_ref("Model"), "the agent"), **_errors()}}},
        "/v1/chat/completions": {"post": {
            "operationId": "createChatCompletion", "tags": ["openai"],
            "summary": "Run a turn of an agent (OpenAI chat completions)",
            "parameters": [_SESSION_HEADER],
            "requestBody": {"required": True, "content": {_JSON: {
                "schema": _ref("ChatCompletionRequest")}}},
            "responses": {"200": {**turn_ok, "content": {
                _JSON: {"schema": _ref("ChatCompletion")},
                _SSE: {"schema": {"type": "string"}}}}, **_errors()}}},
        "/v1/responses": {"post": {
            "operationId": "createResponse", "tags": ["openai"],
            "summary": "Run a turn of an agent (OpenAI Responses)",
            "parameters": [_SESSION_HEADER],
            "requestBody": {"required": True, "content": {_JSON: {
                "schema": _ref("ResponseRequest")}}},
            "responses": {"200": {**turn_ok, "content": {
                _JSON: {"schema": _ref("Response")},
                _SSE: {"schema": {"type": "string"}}}}, **_errors()}}},
        "/v1/responses/{response_id}": {"get": {
            "operationId": "getResponse", "tags": ["openai"], "summary": "A run as a Response",
            "parameters": [{"name": "response_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": _json(_ref("Response"), "the run"), **_errors()}}},
    }


def _mcp_paths() -> dict[str, Any]:
    answer = {"description": "MCP's JSON-RPC response (streamable HTTP, stateless, JSON)",
              "content": {_JSON: {"schema": _ref("JSONRPCResponse")}}}
    other = {"description": "refused by the MCP transport (its own JSON-RPC error body)"}
    accepted = {"description": "a notification or a response from the client: accepted"}
    stream = {"description": "the server-to-client stream (empty: the transport is stateless)",
              "content": {_SSE: {"schema": {"type": "string"}}}}
    responses: dict[str, Any] = {"200": answer, "4XX": other, "5XX": other}
    operation: dict[str, Any] = {"tags": ["mcp"], "responses": responses}
    return {"/mcp": {
        "post": {**operation, "operationId": "mcpRequest",
                 "summary": "MCP (streamable HTTP): each agent is a tool",
                 "description": "Send `Accept: application/json, text/event-stream`. Tools: "
                                "one per agent, `{input, session_id?}`.",
                 "requestBody": {"required": True, "content": {_JSON: {
                     "schema": _ref("JSONRPCRequest")}}},
                 "responses": {**responses, "202": accepted}},
        "get": {**operation, "operationId": "mcpStream",
                "summary": "MCP server-to-client stream (nothing is sent on it: the transport "
                           "is stateless)",
                "responses": {**responses, "200": stream}},
        "delete": {**operation, "operationId": "mcpEndSession",
                   "summary": "End an MCP session (not offered: the transport is stateless)"}}}


def _a2a_paths() -> dict[str, Any]:
    agent = {"name": "agent", "in": "path", "required": True, "schema": {"type": "string"}}
    missing = {"description": "no such agent"}
    return {
        "/a2a/{agent}": {"post": {
            "operationId": "callAgentRpc", "tags": ["a2a"],
            "summary": "A2A JSON-RPC: SendMessage, SendStreamingMessage, GetTask, CancelTask, "
                       "SubscribeToTask (and A2A 0.3's names)",
            "parameters": [agent],
            "requestBody": {"required": True, "content": {_JSON: {
                "schema": _ref("JSONRPCRequest")}}},
            "responses": {"200": {"description": "the JSON-RPC response, or (streaming "
                                                 "methods) server-sent events of them",
                                  "content": {_JSON: {"schema": _ref("JSONRPCResponse")},
                                              _SSE: {"schema": {"type": "string"}}}},
                          "404": missing, "4XX": {"description": "refused"},
                          "5XX": {"description": "unavailable"}}}},
        "/a2a/{agent}/.well-known/agent-card.json": {"get": {
            "operationId": "getAgentCard", "tags": ["a2a"], "summary": "An agent's A2A card",
            "parameters": [agent],
            "responses": {"200": _json(_ref("AgentCard"), "the card"), "404": missing}}},
        "/.well-known/agent-card.json": {"get": {
            "operationId": "getRootAgentCard", "tags": ["a2a"],
            "summary": "The first agent's card, every agent listed as a skill",
            "responses": {"200": _json(_ref("AgentCard"), "the card"), "404": missing}}},
    }


def protocol_paths(*, mcp: bool, a2a: bool) -> dict[str, Any]:
    """The path items of the protocol routes served (`mcp`, `a2a`: their extras installed)."""
    paths = _openai_paths()
    if mcp:
        paths.update(_mcp_paths())
    if a2a:
        paths.update(_a2a_paths())
    return paths


def add_protocol_paths(app: FastAPI, *, mcp: bool, a2a: bool) -> None:
    """Add the protocol routes to `app`'s OpenAPI document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("paths", {}).update(protocol_paths(mcp=mcp, a2a=a2a))
        schema.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
