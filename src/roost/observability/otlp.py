"""OTLP export: `encode_otlp` writes the ExportTraceServiceRequest protobuf directly (the stock
encoder's bytes, five times faster) and `export_with` plugs it into the stock exporter."""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    ReadableSpan,
)
from opentelemetry.sdk.trace.export import (
    SpanExportResult,
)
from opentelemetry.util import types

from roost.observability.spans import _UNSET, LeanSpan

log = logging.getLogger("roost.observability")



# -- OTLP encoding --------------------------------------------------------------------------------
#
# The protobuf wire format of opentelemetry/proto/collector/trace/v1 ExportTraceServiceRequest,
# written directly: each message is its fields' bytes, each nested one prefixed by its tag and
# length. Field order and presence match the stock encoder's output byte for byte (a test pins
# it), so any OTLP receiver reads it the same way.

_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_BYTE = [bytes((i,)) for i in range(128)]
_INT64_MIN, _INT64_MAX, _UINT64 = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1
# Span fields 1-2 (trace_id, in two halves, and span_id), 4 (parent_span_id), 6-8 (kind,
# start and end times), each with its tag (and length): one `pack` call for several fields.
_IDS = struct.Struct(">2sQQ2sQ").pack
_PARENT_ID = struct.Struct(">2sQ").pack
_KIND_TIMES = struct.Struct("<BBBQBQ").pack
# Span.flags: HAS_IS_REMOTE, and IS_REMOTE when the parent is remote (fixed32, field 16).
_LOCAL_PARENT, _REMOTE_PARENT = b"\x85\x01\x00\x01\x00\x00", b"\x85\x01\x00\x03\x00\x00"
_LINK_LOCAL, _LINK_REMOTE = b"\x35\x00\x01\x00\x00", b"\x35\x00\x03\x00\x00"
# An UNSET status (an empty Status message, as the stock encoder writes it), then the flags.
_UNSET_AND_LOCAL, _UNSET_AND_REMOTE = b"\x7a\x00" + _LOCAL_PARENT, b"\x7a\x00" + _REMOTE_PARENT
# Encoded span attributes by key, then (short) string value: GenAI and HTTP ones repeat on
# most spans. A key seen with many values (an id) is marked None and never cached again.
# Bounded: 512 keys x 32 values x 128 characters, and as many span names.
_CACHE_LIMIT = 512
_VALUES_PER_KEY = 32
_CACHED_LENGTH = 128
_UNCACHED: Any = object()
_field_cache: dict[str, dict[str, bytes] | None] = {}
_name_cache: dict[str, bytes] = {}
_key_cache: dict[str, bytes] = {}
# The encoded resource and scope of recent batches, by identity (kept alive with the entry).
_message_cache: dict[int, tuple[object, bytes]] = {}


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    n = len(payload)
    return tag + (_BYTE[n] if n < 0x80 else _varint(n)) + payload


def _string(tag: bytes, text: str) -> bytes:
    # "replace": a lone surrogate would make the whole request unparseable.
    return _field(tag, text.encode("utf-8", "replace"))


def _any_value(value: Any) -> bytes:
    kind = type(value)
    if kind is str:
        return _string(b"\x0a", value)
    if kind is int:
        number: int = value
        if 0 <= number < 0x80:
            return b"\x18" + _BYTE[number]
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise ValueError(f"{number} is out of the int64 range")
        return b"\x18" + _varint(number & _UINT64)
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is float:
        return b"\x21" + _DOUBLE(value)
    if kind is tuple or kind is list:
        return _field(b"\x2a", b"".join([_field(b"\x0a", _any_value(v)) for v in value]))
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _string(b"\x0a", str(value))
    if isinstance(value, int):
        return _any_value(int(value))
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", bytes(value))
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _any_value(v)) for v in value]))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(
            [_field(b"\x0a", _encode_key_value(str(k), v)) for k, v in value.items()]))
    raise TypeError(f"invalid attribute value type {type(value).__name__}")


def _encode_key_value(key: str, value: Any) -> bytes:
    prefix = _key_cache.get(key)
    if prefix is None:
        prefix = _string(b"\x0a", key)
        if len(_key_cache) < _CACHE_LIMIT:
            _key_cache[key] = prefix
    return prefix + _field(b"\x12", _any_value(value))


def _attributes(tag: bytes, attributes: types.Attributes, out: list[bytes]) -> None:
    if not attributes:
        return
    for key, value in attributes.items():
        try:
            encoded = _encode_key_value(key, value)
        except Exception as exc:  # the stock encoder's behaviour: drop the attribute, say so
            log.warning("dropping span attribute %r: %s", key, exc)
            continue
        n = len(encoded)
        out.append(tag + (_BYTE[n] if n < 0x80 else _varint(n)) + encoded)


def _span_attributes(attributes: Mapping[str, Any], out: list[bytes]) -> None:
    """`_attributes` of a span, with the fields of few-valued string attributes cached."""
    for key, value in attributes.items():
        if type(value) is str and len(value) <= _CACHED_LENGTH:
            known = _field_cache.get(key, _UNCACHED)
            if known is _UNCACHED:
                known = _field_cache[key] = {} if len(_field_cache) < _CACHE_LIMIT else None
            if known is not None:
                field = known.get(value)
                if field is None:
                    field = _field(b"\x4a", _encode_key_value(key, value))
                    if len(known) < _VALUES_PER_KEY:
                        known[value] = field
                    else:  # an id, a path: a new value each time, not worth keeping
                        _field_cache[key] = None
                out.append(field)
                continue
        try:
            encoded = _encode_key_value(key, value)
        except Exception as exc:  # the stock encoder's behaviour: drop the attribute, say so
            log.warning("dropping span attribute %r: %s", key, exc)
            continue
        n = len(encoded)
        out.append(b"\x4a" + (_BYTE[n] if n < 0x80 else _varint(n)) + encoded)


def _span(span: ReadableSpan) -> bytes:
    attributes: Mapping[str, Any]
    if type(span) is LeanSpan:  # its fields, without the properties' copies
        ctx, parent, name, kind = span._context, span._parent, span._name, span._kind
        start, end, attributes = span._start_time, span._end_time, span._values
        events, links, status = span._events, span._links, span._status
        dropped = span._dropped_attributes
    else:
        ctx, parent, name, kind = span.context, span.parent, span.name, span.kind
        start, end, attributes = span.start_time, span.end_time, span.attributes or {}
        events, links, status = span.events, span.links, span.status
        dropped = span.dropped_attributes
    assert ctx is not None
    trace_id = ctx.trace_id
    out = [_IDS(b"\x0a\x10", trace_id >> 64, trace_id & _UINT64, b"\x12\x08", ctx.span_id)]
    if ctx.trace_state:
        out.append(_string(b"\x1a", ctx.trace_state.to_header()))
    if parent is not None:
        out.append(_PARENT_ID(b"\x22\x08", parent.span_id))
    encoded_name = _name_cache.get(name)
    if encoded_name is None:
        encoded_name = _string(b"\x2a", name)
        if len(name) <= _CACHED_LENGTH:
            if len(_name_cache) >= _CACHE_LIMIT:
                _name_cache.clear()
            _name_cache[name] = encoded_name
    out += (encoded_name, _KIND_TIMES(0x30, kind.value + 1, 0x39, start or 0, 0x41, end or 0))
    _span_attributes(attributes, out)
    if dropped:
        out.append(b"\x50" + _varint(dropped))
    if events:
        for event in events:
            fields = [b"\x09" + _FIXED64(event.timestamp), _string(b"\x12", event.name)]
            _attributes(b"\x1a", event.attributes, fields)
            if event.dropped_attributes:
                fields.append(b"\x20" + _varint(event.dropped_attributes))
            out.append(_field(b"\x5a", b"".join(fields)))
        if span.dropped_events:
            out.append(b"\x60" + _varint(span.dropped_events))
    if links:
        for link in links:
            linked = link.context
            fields = [b"\x0a\x10", linked.trace_id.to_bytes(16, "big"), b"\x12\x08",
                      linked.span_id.to_bytes(8, "big")]
            _attributes(b"\x22", link.attributes, fields)
            dropped = getattr(link, "dropped_attributes", 0)
            if dropped:
                fields.append(b"\x28" + _varint(dropped))
            fields.append(_LINK_REMOTE if linked.is_remote else _LINK_LOCAL)
            out.append(_field(b"\x6a", b"".join(fields)))
        if span.dropped_links:
            out.append(b"\x70" + _varint(span.dropped_links))
    if status is _UNSET:
        out.append(_UNSET_AND_LOCAL if parent is None or not parent.is_remote
                   else _UNSET_AND_REMOTE)
        return b"".join(out)
    code = status.status_code.value
    if code or status.description:
        out.append(_field(b"\x7a", (_string(b"\x12", status.description)
                                    if status.description else b"")
                          + (b"\x18" + _BYTE[code] if code else b"")))
    else:
        out.append(b"\x7a\x00")  # UNSET: an empty Status, as the stock encoder writes it
    out.append(_REMOTE_PARENT if parent is not None and parent.is_remote else _LOCAL_PARENT)
    return b"".join(out)


def _cached(obj: Any, encode: Callable[[Any], bytes]) -> bytes:
    entry = _message_cache.get(id(obj))
    if entry is None or entry[0] is not obj:
        if len(_message_cache) >= 64:
            _message_cache.clear()
        entry = _message_cache[id(obj)] = (obj, encode(obj))
    return entry[1]


def _resource(resource: Resource) -> bytes:
    out: list[bytes] = []
    _attributes(b"\x0a", resource.attributes, out)
    return b"".join(out)


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    out = [_string(b"\x0a", scope.name) if scope.name else b"",
           _string(b"\x12", scope.version) if scope.version else b""]
    _attributes(b"\x1a", getattr(scope, "attributes", None), out)
    return b"".join(out)


def encode_otlp(spans: Sequence[ReadableSpan]) -> bytes:
    """`spans` as a serialized OTLP `ExportTraceServiceRequest`, grouped by resource and scope."""
    groups: dict[int, tuple[Resource, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope
        group = groups.get(id(resource))
        if group is None:
            group = groups[id(resource)] = (resource, {})
        scoped = group[1].get(id(scope))
        if scoped is None:
            scoped = group[1][id(scope)] = (scope, [])
        scoped[1].append(_field(b"\x12", _span(span)))
    out = []
    for resource, scopes in groups.values():
        fields = [_field(b"\x0a", _cached(resource, _resource))]
        for scope, encoded in scopes.values():
            scope_fields = [_field(b"\x0a", _cached(scope, _scope)), *encoded]
            if scope is not None and scope.schema_url:
                scope_fields.append(_string(b"\x1a", scope.schema_url))
            fields.append(_field(b"\x12", b"".join(scope_fields)))
        if resource.schema_url:
            fields.append(_string(b"\x1a", resource.schema_url))
        out.append(_field(b"\x0a", b"".join(fields)))
    return b"".join(out)


# -- propagation and context ----------------------------------------------------------------------


def export_with(
    exporter: Any, spans: Sequence[ReadableSpan],
    stock_export: Callable[[Sequence[ReadableSpan]], SpanExportResult],
) -> SpanExportResult:
    """Export `spans` through the stock exporter's HTTP client, encoded by `encode_otlp`.

    The client (endpoint, headers, TLS, compression, retries with backoff) and the exporter's
    own metrics are private parts of `opentelemetry-exporter-otlp-proto-http` (as of 1.45);
    with any other layout the stock `export` runs instead: slower, never wrong. A test pins
    that the fast path is taken.
    """
    client = getattr(exporter, "_client", None)
    metrics = getattr(exporter, "_metrics", None)
    if (client is None or not hasattr(client, "export") or metrics is None
            or not hasattr(metrics, "export_operation")
            or getattr(exporter, "_shutdown", True)):
        return stock_export(spans)
    with metrics.export_operation(len(spans)) as outcome:
        try:
            data = encode_otlp(spans)
        except Exception as exc:
            log.exception("encoding %d spans failed", len(spans))
            outcome.error = exc
            return SpanExportResult.FAILURE
        limit = getattr(exporter, "_max_request_size", 0) or 0
        if 0 < limit < len(data):
            log.warning("dropping %d spans: %d bytes is over the exporter's max_request_size "
                        "%d", len(spans), len(data), limit)
            outcome.error = ValueError("request too large")
            return SpanExportResult.FAILURE
        result = client.export(data)
        if not getattr(result, "success", False):
            outcome.error = getattr(result, "error", None)
            return SpanExportResult.FAILURE
    return SpanExportResult.SUCCESS


