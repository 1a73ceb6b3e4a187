"""Structured logs: one format for Roost's, uvicorn's and everyone's stdlib loggers.

Roost's own modules log with plain `logging.getLogger("roost.…")` (domain code never imports
this package); `configure_logging` routes every stdlib record through structlog's
`ProcessorFormatter`, which adds the fields bound for the current request or run, the current
trace and span ids, and removes secrets before rendering JSON (production) or aligned console
lines (a TTY):

    {"event": "run finished", "level": "info", "logger": "roost.runs", "request_id": "…",
     "tenant": "acme", "agent": "support", "session_id": "…", "run_id": "…", "trace_id": "…",
     "status": "completed", "duration_ms": 812.4, "timestamp": "2025-…Z"}

Context is bound per task with `bind()` / `bound()`: asyncio copies it into child tasks, so a
run's tool tasks inherit their run's fields, and nothing leaks between concurrent requests.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from typing import IO, Any

import orjson
import structlog
from opentelemetry import trace

_EMPTY: Mapping[str, Any] = {}
# One variable holding an immutable mapping: binding several fields is one `set`, and a
# child task sees a snapshot, never a later mutation by its parent.
_context: ContextVar[Mapping[str, Any]] = ContextVar("roost_log_context", default=_EMPTY)


def bind(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add fields to every log line of the current task (and tasks it starts from now on).

    Returns a token for `unbind`; prefer `bound()` when a `with` block fits.
    """
    current = _context.get()
    return _context.set({**current, **fields} if current else fields)


def unbind(token: Token[Mapping[str, Any]] | None) -> None:
    """Restore the fields as they were before `bind` returned `token`.

    Tolerates a token from another context (hooks may end in a different task than they
    started in): the fields then simply die with the task that bound them.
    """
    if token is not None:
        with contextlib.suppress(ValueError, RuntimeError):
            _context.reset(token)


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """`with bound(tenant="acme"):` — fields on every log line inside the block."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current_context() -> Mapping[str, Any]:
    """The fields bound in the current context (read-only)."""
    return _context.get()


# -- redaction --------------------------------------------------------------------------------

MASK = "[REDACTED]"

_SECRET_KEYS = frozenset(
    {
        "authorization", "proxy_authorization", "x_api_key", "api_key", "apikey", "password",
        "passwd", "secret", "token", "cookie", "set_cookie", "private_key", "credentials",
    }
)
# `_token` but not `_tokens`: `input_tokens` is a count, `access_token` a secret.
_SECRET_SUFFIXES = ("_api_key", "_apikey", "_password", "_secret", "_token", "_private_key")

_SECRET_RE = re.compile(
    # key=value / "key": "value" inside free text (query strings, repr'd dicts, messages);
    # the value may itself be "Bearer xyz".
    r"(?P<kv>\b(?:x[_-]api[_-]key|api[_-]?key|password|passwd|secret|client[_-]secret"
    r"|access[_-]token|refresh[_-]token|token|authorization)[\"']?\s*[:=]\s*[\"']?)"
    r"(?!\[REDACTED\])(?:(?:bearer|basic|token)\s+)?(?!\[REDACTED\])[^\s\"'&,;}\]]+"
    r"|(?P<scheme>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=\-]{6,}"
    r"|(?P<url>://[^/\s:@]+:)(?!\[REDACTED\])[^@\s/]+@"
    # Well-known key shapes: OpenAI/Anthropic, AWS, GitHub, Slack, Google.
    r"|\bsk-[A-Za-z0-9_\-]{8,}|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{20,}"
    r"|\bxox[abprs]-[A-Za-z0-9\-]{10,}|\bAIza[0-9A-Za-z_\-]{35}",
    re.IGNORECASE,
)
_MAX_DEPTH = 8


def _mask_match(m: re.Match[str]) -> str:
    if m["kv"]:
        return m["kv"] + MASK
    if m["scheme"]:
        return m["scheme"] + MASK
    if m["url"]:
        return m["url"] + MASK + "@"
    return MASK


_key_verdicts: dict[str, bool] = {}


def is_secret_key(key: object) -> bool:
    """True for `Authorization`, `x-api-key`, `db_password`, `access_token`, …"""
    if type(key) is str:
        found = _key_verdicts.get(key)
        if found is not None:
            return found
    name = str(key).lower().replace("-", "_")
    verdict = name in _SECRET_KEYS or name.endswith(_SECRET_SUFFIXES)
    # Field names are few (they are code, not data); the bound keeps a bad caller harmless.
    if type(key) is str and len(_key_verdicts) < 4096:
        _key_verdicts[key] = verdict
    return verdict


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of `value` with secret-named keys masked and secret-looking strings scrubbed.

    Never mutates `value`: callers log their own dicts (headers, settings) and keep using them.
    """
    if isinstance(value, str):
        return _SECRET_RE.sub(_mask_match, value) if len(value) >= 8 else value
    if _depth >= _MAX_DEPTH:
        return value if isinstance(value, int | float | bool | None) else "[…]"
    if isinstance(value, Mapping):
        return {
            k: MASK if is_secret_key(k) else redact(v, _depth + 1) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v, _depth + 1) for v in value]
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"), _depth)
    return value


# Fields Roost itself fills with ids, levels and times: nothing to scrub.
_TRUSTED_FIELDS = frozenset(
    {"timestamp", "level", "logger", "trace_id", "span_id", "request_id", "run_id",
     "session_id", "tool_call_id", "duration_ms"}
)


def redact_secrets(_logger: Any, _method: str, event_dict: Any) -> Any:
    """structlog processor: `redact` every field (the event dict itself is ours to change)."""
    for key, value in event_dict.items():
        if key in _TRUSTED_FIELDS or key.startswith("_"):
            continue  # ours, or structlog's own bookkeeping (_record, _from_structlog)
        if is_secret_key(key):
            event_dict[key] = MASK
        elif type(value) is str:
            if len(value) >= 8:
                event_dict[key] = _SECRET_RE.sub(_mask_match, value)
        elif not isinstance(value, int | float | bool | None):
            event_dict[key] = redact(value)
    return event_dict


# -- context processors -----------------------------------------------------------------------


def add_context(_logger: Any, _method: str, event_dict: Any) -> Any:
    """structlog processor: the fields bound with `bind` (explicit fields win)."""
    ctx = _context.get()
    if ctx:
        for key, value in ctx.items():
            event_dict.setdefault(key, value)
    return event_dict


def add_trace_ids(_logger: Any, _method: str, event_dict: Any) -> Any:
    """structlog processor: `trace_id` / `span_id` of the current OpenTelemetry span."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict["trace_id"] = format(ctx.trace_id, "032x")
        event_dict["span_id"] = format(ctx.span_id, "016x")
    return event_dict


_RECORD_ATTRS = frozenset(
    logging.LogRecord("name", 0, "pathname", 0, "msg", (), None).__dict__
) | {"message", "asctime", "taskName", "color_message"}  # uvicorn: the message + ANSI codes


def add_extra(_logger: Any, _method: str, event_dict: Any) -> Any:
    """structlog processor: a stdlib record's `extra={...}` fields.

    Like structlog's `ExtraAdder`, minus what other formatters attach to a shared record
    (`message`, `asctime`), uvicorn's `color_message` (the message again, with ANSI colour
    codes) and private attributes.
    """
    record = event_dict.get("_record")
    if record is not None:
        attrs = record.__dict__
        for key in attrs.keys() - _RECORD_ATTRS:
            if not key.startswith("_"):
                event_dict.setdefault(key, attrs[key])
    return event_dict


class FastProcessorFormatter(structlog.stdlib.ProcessorFormatter):
    """`ProcessorFormatter` without its per-record copy for plain stdlib records.

    structlog copies every record (`logging.makeLogRecord`) so that several formatters can
    share it; ours never mutates the record, so the copy — a fifth of a log line's cost — goes.
    Records from structlog loggers take the stock path.
    """

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "_logger", None) is not None:
            return super().format(record)
        method = record.levelname.lower()
        ed: Any = {"event": record.getMessage(), "_record": record, "_from_structlog": False}
        if record.exc_info:
            ed["exc_info"] = record.exc_info
        if record.stack_info:
            ed["stack_info"] = record.stack_info
        for proc in self.foreign_pre_chain or ():
            ed = proc(None, method, ed)
        for proc in self.processors:
            ed = proc(None, method, ed)
        return str(ed)


def _dumps(obj: Any, **_kw: Any) -> str:
    return orjson.dumps(obj, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


# -- configuration ----------------------------------------------------------------------------

_installed: logging.Handler | None = None
_previous_level: int | None = None
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    *,
    stream: IO[str] | None = None,
    access_log: bool = True,
) -> logging.Handler:
    """Route structlog and stdlib logging (uvicorn's included) to one structured handler.

    Process-wide, as logging is; idempotent: a second call replaces the first handler.
    `fmt` "auto" renders JSON unless `stream` is a TTY. With Roost's own `access_log` on,
    uvicorn's access logger is quieted so requests are not logged twice (run uvicorn with
    `log_config=None` so it leaves the loggers to us).
    """
    global _installed, _previous_level
    out = stream if stream is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    as_json = fmt == "json" or (fmt == "auto" and not tty)

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_context,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        add_extra,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become text *before* redaction, so exception messages are scrubbed too.
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if as_json
        else structlog.dev.ConsoleRenderer(
            # Never rich's pretty traceback: it prints local variables, secrets included.
            colors=tty, exception_formatter=structlog.dev.plain_traceback)
    )
    formatter = FastProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    else:
        _previous_level = root.level
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level.lower(), logging.INFO))
    _installed = handler

    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING if access_log else logging.NOTSET)

    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return handler


def unconfigure_logging() -> None:
    """Remove the handler `configure_logging` installed and restore structlog's defaults."""
    global _installed, _previous_level
    if _installed is not None:
        root = logging.getLogger()
        root.removeHandler(_installed)
        if _previous_level is not None:
            root.setLevel(_previous_level)
        _installed = _previous_level = None
    logging.getLogger("uvicorn.access").setLevel(logging.NOTSET)
    structlog.reset_defaults()
