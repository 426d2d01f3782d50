"""A lean, wire-compatible view of ``ExportTraceServiceRequest`` for the span hot path.

Why: ingest cost is dominated not by parsing (upb parses lazily and fast) but by the Python objects
made while visiting each span. Finding ``http.route`` in a span's attribute list means creating a
``KeyValue`` wrapper and a key string for every attribute of every span, which halves throughput on a
realistic span with five attributes.

Protobuf encodes a ``map<string, V>`` field exactly like ``repeated Entry {string key = 1; V value = 2}``,
and OTLP's ``KeyValue`` is ``{string key = 1; AnyValue value = 2}``. So the same bytes can be parsed
with a schema in which ``Span.attributes`` is a map, and the route becomes one hash lookup in C. This
module builds that schema at import time *from opentelemetry-proto's own descriptors* (field numbers and
types are copied, never typed by hand), keeping only the fields the adapter reads; the others are left
as unknown fields by the parser and cost nothing to visit. Tests check that this view and the official
messages agree on every field the adapter uses.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

PACKAGE = "latency_adapter.lean"
_TYPE = descriptor_pb2.FieldDescriptorProto

#: Official message -> (lean name, fields kept). Types of kept message fields are remapped to lean ones.
_KEEP: tuple[tuple[Any, str, tuple[str, ...]], ...] = (
    (common_pb2.AnyValue, "AnyValue", ("string_value", "bool_value", "int_value", "double_value")),
    (common_pb2.KeyValue, "KeyValue", ("key", "value")),
    (resource_pb2.Resource, "Resource", ("attributes",)),
        (trace_pb2.Span, "Span", ("trace_id", "kind", "start_time_unix_nano", "end_time_unix_nano",
                              "attributes", "status")),
    (trace_pb2.ScopeSpans, "ScopeSpans", ("spans",)),
    (trace_pb2.ResourceSpans, "ResourceSpans", ("resource", "scope_spans")),
    (trace_service_pb2.ExportTraceServiceRequest, "ExportTraceServiceRequest", ("resource_spans",)),
)


def _build() -> Any:
    lean_names = {official.DESCRIPTOR.full_name: f".{PACKAGE}.{name}" for official, name, _ in _KEEP}
    file = descriptor_pb2.FileDescriptorProto(name="latency_adapter_lean_trace.proto", package=PACKAGE,
                                              syntax="proto3")
    for official, name, keep in _KEEP:
        full = descriptor_pb2.DescriptorProto()
        official.DESCRIPTOR.CopyToProto(full)
        lean = file.message_type.add(name=name)
        lean.oneof_decl.extend(full.oneof_decl)
        for field in full.field:
            if field.name not in keep:
                continue
            copy = lean.field.add()
            copy.CopyFrom(field)
            if field.type == _TYPE.TYPE_ENUM:  # enums travel as varints; an int32 reads them the same
                copy.type = _TYPE.TYPE_INT32
                copy.ClearField("type_name")
            elif field.type == _TYPE.TYPE_MESSAGE and field.type_name.lstrip(".") in lean_names:
                copy.type_name = lean_names[field.type_name.lstrip(".")]
        if name == "Span":
            # repeated KeyValue attributes = 9  ->  map<string, bytes> attributes = 9: the value stays
            # an encoded AnyValue, decoded once per distinct value instead of once per span.
            entry = lean.nested_type.add(name="AttributesEntry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=_TYPE.TYPE_STRING, label=_TYPE.LABEL_OPTIONAL)
            entry.field.add(name="value", number=2, type=_TYPE.TYPE_BYTES, label=_TYPE.LABEL_OPTIONAL)
            for f in lean.field:
                if f.name == "attributes":
                    f.type_name = f".{PACKAGE}.Span.AttributesEntry"
                elif f.name == "status":
                    # Status stays encoded: empty for the usual unset status, decoded only when present.
                    f.type = _TYPE.TYPE_BYTES
                    f.ClearField("type_name")
        # drop oneofs that lost all their fields
        used = {f.oneof_index for f in lean.field if f.HasField("oneof_index")}
        if not used:
            del lean.oneof_decl[:]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.ExportTraceServiceRequest"))


#: ``ExportTraceServiceRequest`` with only the fields the adapter reads; ``Span.attributes`` is a map from
#: key to encoded ``AnyValue`` bytes and ``Span.status`` is the encoded ``Status`` (empty when unset).
LeanTraceRequest: Any = _build()


def attr_text(value: Any) -> str:
    """The string form of an OTLP ``AnyValue`` (string, int, bool or double; anything else is "")."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return str(value.string_value)
    if which == "int_value":
        return str(value.int_value)
    if which == "bool_value":
        return "true" if value.bool_value else "false"
    if which == "double_value":
        return repr(value.double_value)
    return ""
