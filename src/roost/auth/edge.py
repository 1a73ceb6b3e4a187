"""Authentication and authorization at the ASGI edge, in front of the hot paths and FastAPI.

    observability ─▶ body limit ─▶ AuthEdge ─▶ HotPath ─▶ FastAPI

For every HTTP request, in this order:
1. find the route in the permission table (`permissions.py`); `public` routes pass as is;
2. the principal: with auth off, the anonymous admin; else the token from
   `Authorization: Bearer …` or `X-API-Key` through the chain (`chain.py`) — none or a bad
   one → 401 problem+json with `WWW-Authenticate`;
3. the tenant: the principal's; `server.tenant_header` may name another only for admins or
   requests from `auth.trusted_proxies` (anyone else naming a different tenant → 403);
4. the role must hold the route's permission → else 403;
5. with `auth.user_scoped`, a `user` reaches only sessions (and their runs, artifacts, and
   the ids the protocol adapters take: `roost.runtime.scope`) whose user_id is theirs —
   anything else answers 404, like another tenant's object;
6. a turn (native or through a protocol) of a tenant, or with an API key, whose budget is
   spent → 429 `budget_exceeded` (`budgets.py`, `keybudgets/`);
7. `scope["roost.principal"]` carries the result to the routes (`tenant_of`, `principal_of`).

State-changing calls and refusals go to the audit log (`audit.py`). The cost on a cached
API key is a header scan, one sha256 and two dict lookups (see docs in the issue note).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from roost.auth.audit import STATE_CHANGING
from roost.auth.budgets import BudgetGate, UsageQuery
from roost.auth.chain import Auth
from roost.auth.keybudgets import CHARGE_TO
from roost.auth.permissions import PROTOCOL_ROUTES, RouteTable, allowed
from roost.auth.principal import ANONYMOUS, PRINCIPAL, Principal
from roost.errors import ArtifactNotFound, InvalidInput, RoostError, RunNotFound, SessionNotFound
from roost.runtime.scope import ACTING_USER
from roost.server import problems
from roost.server.forwarded import PEER
from roost.server.problems import problem
from roost.sessions.usage import UsageTotals

if TYPE_CHECKING:
    from roost.runtime.runtime import Runtime

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="roost"'}
_TURNS = "/v1/sessions/{session_id}/turns"
# Requests that start runs, the ones budgets admit or refuse: native turns and the
# protocol adapters' (an MCP POST may also be a tools/list: refused alike when spent).
_SPENDING = frozenset({("POST", _TURNS), ("POST", "/v1/chat/completions"),
                       ("POST", "/v1/responses"), ("POST", "/mcp"), ("POST", "/a2a/{agent}")})


class AuthEdge:
    def __init__(self, app: ASGIApp, auth: Auth, runtime: Runtime | None = None,
                 table: RouteTable | None = None) -> None:
        self.app = app
        self.auth = auth
        self.runtime = runtime
        self.table = table or RouteTable()
        self.user_scoped = auth.config.user_scoped
        self.trail = auth.audit
        self.budgets: BudgetGate | None = None
        if runtime is not None:
            gate = BudgetGate(auth.config.budgets, _usage_of(runtime))
            self.budgets = gate if gate.active else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket" and self.auth.enabled:
                # No route takes a WebSocket, and none would be authorized here: refuse
                # (closing before accepting answers 403) rather than pass one through.
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        match = self.table.match(method, path)
        if match is not None and match[1] == "public":
            await self.app(scope, receive, send)
            return
        template, permission, target = match or (path, None, None)
        action = f"{method} {template}"
        token = header_value = None
        tenant_header = self.auth.tenant_header
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    token = credentials.strip().decode("latin-1")
            elif name == b"x-api-key":
                token = value.strip().decode("latin-1")
            elif name == tenant_header and value:
                header_value = value.decode("latin-1")
        principal: Principal | None
        if not self.auth.enabled:
            principal = ANONYMOUS
        elif token:
            principal = await self.auth.authenticate(token)
            if principal is None:
                return await self._refuse(scope, receive, send, 401, "unauthenticated",
                                          "the credentials are not valid", action, None, target)
        else:
            return await self._refuse(scope, receive, send, 401, "unauthenticated",
                                      "this route needs credentials: Authorization: Bearer <key> "
                                      "or X-API-Key", action, None, target)
        if header_value is not None and header_value != principal.tenant:
            # The TCP peer (roost.peer behind a trusted proxy), never a forwarded address.
            if principal.is_admin or self.auth.trusted_proxy(scope.get(PEER, scope.get("client"))):
                principal = principal.in_tenant(header_value)
            else:
                return await self._refuse(scope, receive, send, 403, "forbidden",
                                          "only admins and trusted proxies may name the tenant",
                                          action, principal, target)
        if permission is not None and not allowed(principal.role, permission):
            return await self._refuse(scope, receive, send, 403, "forbidden",
                                      f"the {principal.role} role may not {action}",
                                      action, principal, target)
        if self.user_scoped and principal.role == "user":
            if template == "/v1/agents/{name}/sessions" and method == "POST":
                replay = await self._own_session(scope, receive, principal)
                if replay is None:
                    return await self._refuse(scope, _nothing, send, 403, "forbidden",
                                              "a user creates sessions only for themselves",
                                              action, principal, target)
                receive = replay
            hidden = await self._user_scope(scope, template, target, principal)
            if hidden is not None:
                if self.trail.enabled:
                    self.trail.record(action=action, outcome="refused", status=404,
                                 principal=principal, tenant=principal.tenant, target=target,
                                 request_id=scope.get("roost.request_id"),
                                 client=_client(scope), reason="user_scoped")
                await problems.error_response(hidden, method, path)(scope, receive, send)
                return
        charging = None
        if (self.budgets is not None or principal.budget is not None) and (
                (method, template) in _SPENDING):
            exceeded = None
            if self.budgets is not None:
                exceeded = await self.budgets.check(principal.tenant)
                whose = "tenant"
            key_budgets = self.auth.key_budgets
            if (exceeded is None and principal.budget is not None and key_budgets is not None
                    and principal.key_id is not None):
                exceeded = await key_budgets.check(principal.key_id, principal.budget)
                whose = "API key"
                # The runs this request starts are charged to the key when they end.
                charging = CHARGE_TO.set(principal.key_id)
            if exceeded is not None:
                if charging is not None:
                    CHARGE_TO.reset(charging)
                what, retry_after = exceeded
                return await self._refuse(scope, receive, send, 429, "budget_exceeded",
                                          f"the {whose}'s {what.replace('_', ' ')} budget is "
                                          "spent", action, principal, target,
                                          retry_after=retry_after)
        scope[PRINCIPAL] = principal
        acting = None
        if (self.user_scoped and principal.role == "user"
                and (method, template) in PROTOCOL_ROUTES):
            # Their ids are in the bodies: the runtime scopes those lookups itself.
            acting = ACTING_USER.set(principal.user_id)
        try:
            if method not in STATE_CHANGING or not self.trail.enabled:
                await self.app(scope, receive, send)
                return
            status = 0

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                outcome = "ok" if 0 < status < 400 else "failed"
                self.trail.record(action=action, outcome=outcome, status=status or 500,
                                  principal=principal, tenant=principal.tenant, target=target,
                                  request_id=scope.get("roost.request_id"),
                                  client=_client(scope))
        finally:
            if acting is not None:
                ACTING_USER.reset(acting)
            if charging is not None:
                CHARGE_TO.reset(charging)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, kind: str,
                      detail: str, action: str, principal: Principal | None,
                      target: str | None, retry_after: float | None = None) -> None:
        if self.trail.enabled:
            self.trail.record(action=action, outcome="refused", status=status, principal=principal,
                         tenant=principal.tenant if principal else None, target=target,
                         request_id=scope.get("roost.request_id"), client=_client(scope),
                         reason=kind)
        response = problem(status, kind, detail, retry_after=retry_after,
                           headers=_CHALLENGE if status == 401 else None)
        await response(scope, receive, send)

    async def _own_session(self, scope: Scope, receive: Receive,
                           principal: Principal) -> Receive | None:
        """The request body with `user_id` set to the caller's (None: it named someone
        else). A body that is not a JSON object passes as is, for the route to refuse."""
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            data = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            if data.get("user_id") not in (None, principal.user_id):
                return None
            data["user_id"] = principal.user_id
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
            if not body:  # no body at all: now a JSON one
                headers = [(k, v) for k, v in headers if k != b"content-type"]
                headers.append((b"content-type", b"application/json"))
            body = orjson.dumps(data)
            headers.append((b"content-length", b"%d" % len(body)))
            scope["headers"] = headers
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _user_scope(self, scope: Scope, template: str, target: str | None,
                          principal: Principal) -> RoostError | None:
        """The not-found error to answer when a user-scoped principal must not see the
        target: the very one an unknown id gets, so nothing tells the two apart."""
        runtime = self.runtime
        if runtime is None:
            return None
        if template == "/v1/sessions" and scope["method"] in ("GET", "HEAD"):
            # The listing is filtered to the caller's own sessions.
            query = [(k, v) for k, v in parse_qsl(scope["query_string"].decode("latin-1"),
                                                  keep_blank_values=True) if k != "user_id"]
            query.append(("user_id", principal.user_id or ""))
            scope["query_string"] = urlencode(query).encode("latin-1")
            return None
        if template == "/v1/artifacts/{artifact_id}":
            # Tenant-wide ids: a user-scoped user reads artifacts through their session
            # (/v1/sessions/{id}/artifacts/{artifact_id}), where ownership is checked.
            return ArtifactNotFound(f"no artifact {target}", artifact_id=target)
        if template == "/v1/runs" and scope["method"] in ("GET", "HEAD"):
            # Runs carry no user: a user-scoped caller lists the runs of one session of
            # their own.
            params = dict(parse_qsl(scope["query_string"].decode("latin-1")))
            if "session_id" not in params:
                return InvalidInput("user-scoped callers list the runs of one of their "
                                    "sessions: pass session_id", field="session_id")
            target, template = params["session_id"], "/v1/sessions/{session_id}"
        if target is None:
            return None
        try:
            if template.startswith("/v1/runs/"):
                session_id = (await runtime.get_run(principal.tenant, target)).session_id
                hidden: RoostError = RunNotFound(f"run {target} not found", run_id=target)
            elif template.startswith("/v1/sessions/"):
                session_id = target
                hidden = SessionNotFound(f"session {target} not found", session_id=target)
            else:
                return None
            session = await runtime.get_session(principal.tenant, session_id)
        except RoostError:
            return None  # the route answers it (404 for an unknown id) as it would anyway
        return None if session.user_id == principal.user_id else hidden


def _usage_of(runtime: Runtime) -> UsageQuery:
    async def usage(tenant: str, since: float) -> UsageTotals:
        totals = await runtime.usage_summary(tenant, group_by=(), since=since)
        return totals[0] if totals else UsageTotals(key={})

    return usage


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


def principal_of(scope: Any) -> Principal:
    """The request's principal (the anonymous admin where no `AuthEdge` ran)."""
    principal: Principal | None = scope.get(PRINCIPAL)
    return ANONYMOUS if principal is None else principal


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None
