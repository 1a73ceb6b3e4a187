"""JSON encoding shared by the store backends that serialise records.

One place decides how records become bytes, so a session written by one backend reads back
the same from every other, and so the memory store can round-trip through it to behave like
a real one (a value JSON cannot hold fails on every backend alike).

    blob = encode(session.state)           # bytes, msgspec JSON
    state = decode_object(blob)            # dict[str, Any]
    cursor = encode_cursor(s.created_at, s.id)
    created_at, session_id = decode_cursor(cursor)

Errors: a value JSON cannot hold raises `InvalidInput` (the caller's mistake); stored bytes
that do not decode raise `StoreError` (the store's problem); a malformed cursor raises
`InvalidInput` with field "cursor". msgspec round-trips floats exactly, so timestamps and
cursors compare equal after a trip.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar

import msgspec

from roost.errors import InvalidInput, StoreError
from roost.sessions.records import Event, RunRecord, Session, Usage

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_object_decoder = msgspec.json.Decoder(dict[str, Any])
_usage_decoder = msgspec.json.Decoder(Usage)
_session_decoder = msgspec.json.Decoder(Session)
_event_decoder = msgspec.json.Decoder(Event)
_run_decoder = msgspec.json.Decoder(RunRecord)
_cursor_decoder = msgspec.json.Decoder(tuple[float, str])


def encode(value: Any) -> bytes:
    """JSON bytes of a record or a JSON-like value; `InvalidInput` when JSON cannot hold it."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"value cannot be stored as JSON: {exc}") from exc


def encode_text(value: Any) -> str:
    """`encode` as str, for drivers that bind JSON as text (sqlite TEXT, asyncpg jsonb)."""
    return encode(value).decode()


def decode_object(raw: bytes | str) -> dict[str, Any]:
    """A stored JSON object (state, metadata, event data, error) as a fresh dict."""
    return _decode(_object_decoder, raw)


def decode_optional_object(raw: bytes | str | None) -> dict[str, Any] | None:
    return None if raw is None else _decode(_object_decoder, raw)


def decode_usage(raw: bytes | str) -> Usage:
    return _decode(_usage_decoder, raw)


def decode_session(raw: bytes | str) -> Session:
    """A whole `Session` encoded with `encode` (for key-value backends and copies)."""
    return _decode(_session_decoder, raw)


def decode_event(raw: bytes | str) -> Event:
    return _decode(_event_decoder, raw)


def decode_run(raw: bytes | str) -> RunRecord:
    return _decode(_run_decoder, raw)


def encode_cursor(created_at: float, item_id: str) -> str:
    """The opaque `next_cursor` after an item listed newest first by (created_at, id)."""
    return base64.urlsafe_b64encode(_encoder.encode((created_at, item_id))).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(created_at, id) of the last item of the previous page; `InvalidInput` when malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return _cursor_decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise InvalidInput("malformed cursor", field="cursor") from exc


def _decode(decoder: msgspec.json.Decoder[T], raw: bytes | str) -> T:
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise StoreError(f"stored record does not decode: {exc}") from exc
