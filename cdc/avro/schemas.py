"""Avro for change events: schemas per table version, the wire format, the schema topic.

Each version of a table (`cdc.events.Table`) gets a key schema (its
replica-identity columns, non-null; none when it has no key) and a value
schema: the envelope of ``schemas/envelope.avsc`` with the table's columns as
the ``Value`` record, every column ``["null", T]`` with default null (pgoutput
does not say NOT NULL, and nullable columns make ADD COLUMN compatible).

Records are written in Avro single-object encoding: ``C3 01``, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical
Form, then the Avro binary body. Every writer schema goes to the compacted
``<prefix>.schemas`` topic (key: the fingerprint, value: a ``cdc.SchemaRecord``
from ``schemas/schema_record.avsc``, itself single-object encoded) before the
first record that uses it, so a consumer needs nothing but Kafka.

The canonical form drops logical types (decimal scale, date vs int, ...), so two
versions of a table can share a fingerprint while meaning different things. A
fingerprint therefore belongs to one (subject, schema) only: on a clash the
``Key`` / ``Value`` record moves to the namespace ``<topic namespace>.variantN``,
which changes the canonical form and nothing else.

Names: the envelope is ``<ns>.Envelope``, its row ``<ns>.Value``, the key
``<ns>.Key`` with ``<ns>`` the topic ``<prefix>.<schema>.<table>`` made of Avro
names; subjects are ``<topic>-key`` and ``<topic>-value``; logical messages use
the fixed ``cdc.MessageEnvelope`` on ``<prefix>.messages``.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
from functools import cache
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Final

from fastavro import parse_schema, schemaless_reader
from fastavro.schema import to_parsing_canonical_form

from cdc.errors import SchemaError
from cdc.events import (
    Table,
    TableColumn,
)

log = logging.getLogger(__name__)

MAGIC: Final = b"\xc3\x01"
HEADER_SIZE: Final = 10  # magic + fingerprint
FIXED_SCHEMAS: Final = (
    "source",
    "transaction",
    "envelope",
    "message",
    "message_key",
    "schema_record",
    "transaction_event",
    "transaction_key",
    "heartbeat",
    "heartbeat_key",
)
#: the records of the side topics (`AvroSerializer.encode_fixed`): kind -> (key schema, value schema)
SIDE_SCHEMAS: Final = {
    "transaction": ("transaction_key", "transaction_event"),
    "heartbeat": ("heartbeat_key", "heartbeat"),
}

_NAME_OK = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NAME_BAD_CHAR = re.compile(r"[^A-Za-z0-9_]")
_NAMED: Final = frozenset({"record", "error", "enum", "fixed"})
#: Logical types that change what the underlying value means (uuid only annotates a string).
_MEANINGFUL_LOGICAL: Final = frozenset(
    {
        "decimal",
        "date",
        "time-millis",
        "time-micros",
        "timestamp-millis",
        "timestamp-micros",
        "timestamp-nanos",
        "local-timestamp-millis",
        "local-timestamp-micros",
        "local-timestamp-nanos",
        "duration",
    }
)
_PRIMITIVE: Final = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


# -- the fixed pieces in schemas/ -----------------------------------------------------------


def schemas_dir() -> Traversable:
    """Where the ``.avsc`` files are: ``cdc/schemas`` in a wheel, ``schemas/`` in a checkout."""
    packaged = resources.files("cdc").joinpath("schemas")
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "schemas"
    if checkout.is_dir():
        return checkout
    raise SchemaError("the Avro schema files (cdc/schemas/*.avsc) are missing: reinstall cdc")


@cache
def fixed_schema(name: str) -> dict[str, Any]:
    """One of `FIXED_SCHEMAS` as parsed JSON (callers get a shared object: copy before changing)."""
    if name not in FIXED_SCHEMAS:
        raise SchemaError(f"no fixed Avro schema {name!r}: expected one of {', '.join(FIXED_SCHEMAS)}")
    path = schemas_dir().joinpath(f"{name}.avsc")
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot load {path}: {exc}; reinstall cdc") from None
    return schema


def _inline(schema: Any, pieces: dict[str, dict[str, Any]], defined: set[str]) -> Any:
    """``schema`` with references to ``pieces`` (by full name) replaced by their definition once."""
    if isinstance(schema, str):
        if schema in pieces and schema not in defined:
            defined.add(schema)
            return copy.deepcopy(pieces[schema])
        return schema
    if isinstance(schema, list):
        return [_inline(branch, pieces, defined) for branch in schema]
    if isinstance(schema, dict):
        out = dict(schema)
        for key in ("type", "items", "values"):
            if key in out:
                out[key] = _inline(out[key], pieces, defined)
        if "fields" in out:
            out["fields"] = [_inline(f, pieces, defined) for f in out["fields"]]
        return out
    return schema


def _with_pieces(schema: dict[str, Any]) -> dict[str, Any]:
    pieces = {"cdc.Source": fixed_schema("source"), "cdc.Transaction": fixed_schema("transaction")}
    inlined: dict[str, Any] = _inline(schema, pieces, set())
    return inlined


# -- names ------------------------------------------------------------------------------------------


def avro_name(text: str) -> str:
    """``text`` as an Avro name: invalid characters become ``_``, a leading digit gets ``_``."""
    if _NAME_OK.match(text):
        return text
    name = _NAME_BAD_CHAR.sub("_", text)
    if not name or name[0].isdigit():
        name = "_" + name
    return name


def field_names(columns: list[TableColumn]) -> list[str]:
    """Unique Avro field names for ``columns``; names already valid never change."""
    taken = {c.name for c in columns if _NAME_OK.match(c.name)}
    names: list[str] = []
    for column in columns:
        if _NAME_OK.match(column.name):
            names.append(column.name)
            continue
        base = candidate = avro_name(column.name)
        n = 2
        while candidate in taken:
            candidate = f"{base}_{n}"
            n += 1
        taken.add(candidate)
        names.append(candidate)
    return names


def _namespace(topic: str) -> str:
    return ".".join(avro_name(part) for part in topic.split("."))


# -- schemas of a table version -------------------------------------------------------------


def _branches(avro: Any) -> list[Any]:
    """The non-null branches of a column's Avro type (a union list is flattened)."""
    branches = avro if isinstance(avro, list) else [avro]
    out = [copy.deepcopy(b) for b in branches if b != "null"]
    if not out or any(isinstance(b, list) for b in out):
        raise SchemaError(f"invalid Avro type for a column: {avro!r}; fix cdc.pgtypes")
    return out


def _column_field(column: TableColumn, name: str, nullable: bool) -> dict[str, Any]:
    branches = _branches(column.type.avro)
    result: dict[str, Any] = {"name": name}
    if nullable:
        result["type"] = ["null", *branches]
        result["default"] = None
    else:
        result["type"] = branches[0] if len(branches) == 1 else branches
    if name != column.name:
        result["pg.name"] = column.name
    result["pg.type"] = column.type.name
    result["pg.oid"] = column.type.oid
    result["pg.typmod"] = column.type.typmod
    return result


def _row_record(name: str, namespace: str | None, fields: list[dict[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {"type": "record", "name": name}
    if namespace is not None:
        record["namespace"] = namespace
    record["fields"] = fields
    return record


def _variant_namespace(namespace: str, variant: int) -> str | None:
    return None if variant == 0 else f"{namespace}.variant{variant}"


def key_schema(table: Table, topic: str, variant: int = 0) -> dict[str, Any] | None:
    """The key record of ``table`` (replica-identity columns, non-null), or None without a key."""
    if not table.has_key:
        return None
    namespace = _namespace(topic)
    names = field_names(table.columns)
    fields = [_column_field(table.columns[i], names[i], nullable=False) for i in table.key_indexes]
    return _row_record("Key", _variant_namespace(namespace, variant) or namespace, fields)


def value_schema(table: Table, topic: str, variant: int = 0) -> dict[str, Any]:
    """The envelope of ``table``: before/after rows of nullable columns, source, op, ts_ms, transaction."""
    namespace = _namespace(topic)
    names = field_names(table.columns)
    fields = [_column_field(c, n, nullable=True) for c, n in zip(table.columns, names, strict=True)]
    envelope = copy.deepcopy(fixed_schema("envelope"))
    envelope["namespace"] = namespace
    envelope["doc"] = f"A change to one row of {table.qualified_name} (op c, u, d, r) or its truncation (t)."
    # the template's empty Value record (before) becomes the table's columns; after refers to it
    envelope["fields"][0]["type"][1] = _row_record("Value", _variant_namespace(namespace, variant), fields)
    if variant:
        envelope["fields"][1]["type"] = ["null", f"{namespace}.variant{variant}.Value"]
    return _with_pieces(envelope)


def message_schema() -> dict[str, Any]:
    """The envelope of logical messages (op ``m``)."""
    return _with_pieces(copy.deepcopy(fixed_schema("message")))


# -- canonical form, fingerprint, single-object encoding ----------------------------------


def schema_json(schema: dict[str, Any]) -> str:
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def parse(schema: Any) -> Any:
    """fastavro's parsed form; SchemaError if ``schema`` is not valid Avro."""
    try:
        return parse_schema(schema, _write_hint=False)
    except Exception as exc:  # fastavro raises many types for bad schemas
        raise SchemaError(f"invalid Avro schema: {exc}; this is a bug in cdc, please report it") from None


def parse_reader(schema: Any) -> Any:
    """`parse` for a schema that reads many records (`read_body`): marked as parsed, so that fastavro
    does not parse it again for every record (about three times faster for an envelope)."""
    try:
        return parse_schema(schema)
    except Exception as exc:  # fastavro raises many types for bad schemas
        raise SchemaError(f"invalid Avro schema: {exc}; this is a bug in cdc, please report it") from None


def canonical_form(schema: Any) -> str:
    """The Parsing Canonical Form of the Avro specification."""
    result: str = to_parsing_canonical_form(parse(schema))
    return result


def _rabin_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY_64 & -(fp & 1))
        table.append(fp)
    return tuple(table)


_EMPTY_64: Final = 0xC15D213AA4D7A795
#: fastavro's rabin_fingerprint builds this table on every call: 2,048 steps per schema, which
#: made publishing the schemas of 300 tables take seconds
_RABIN: Final = _rabin_table()


def fingerprint(canonical: str) -> bytes:
    """CRC-64-AVRO of a canonical form, as the 8 little-endian bytes single-object encoding uses."""
    result, table = _EMPTY_64, _RABIN
    for byte in canonical.encode():
        result = (result >> 8) ^ table[(result ^ byte) & 0xFF]
    return result.to_bytes(8, "little")


def split_single_object(data: bytes) -> tuple[bytes, memoryview]:
    """(fingerprint, body) of a single-object encoded record; SchemaError if it is not one."""
    if len(data) < HEADER_SIZE or data[:2] != MAGIC:
        raise SchemaError(
            f"not Avro single-object encoding (starts {bytes(data[:4]).hex() or 'empty'}, expected c301): "
            "is this topic written by cdc with --format avro?"
        )
    return bytes(data[2:HEADER_SIZE]), memoryview(data)[HEADER_SIZE:]


def read_body(body: bytes | memoryview, parsed: Any) -> Any:
    """Decode one Avro binary body; SchemaError if it is truncated or has bytes left over."""
    stream = io.BytesIO(body)
    try:
        datum = schemaless_reader(stream, parsed, None)
    except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, ...
        if isinstance(exc, EOFError | StopIteration):
            raise SchemaError("the Avro body ends early: the record is truncated") from None
        raise SchemaError(f"the Avro body does not match its schema ({type(exc).__name__}: {exc})") from None
    left = len(body) - stream.tell()
    if left:
        raise SchemaError(
            f"the Avro body has {left} bytes left over after the record: it does not match its schema"
        )
    return datum


# -- walking schemas ---------------------------------------------------------------------------


class NamedTypes:
    """The named types of one schema, by full name."""

    def __init__(self, schema: Any) -> None:
        self.types: dict[str, tuple[dict[str, Any], str]] = {}
        self._walk(schema, "")

    def _walk(self, schema: Any, namespace: str) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self._walk(branch, namespace)
        elif isinstance(schema, dict):
            kind = schema.get("type")
            if kind in _NAMED:
                full = full_name(schema["name"], schema.get("namespace", namespace))
                own = full.rpartition(".")[0]
                self.types[full] = (schema, own)
                for f in schema.get("fields", ()):
                    self._walk(f["type"], own)
            elif kind == "array":
                self._walk(schema["items"], namespace)
            elif kind == "map":
                self._walk(schema["values"], namespace)
            elif isinstance(kind, dict | list):
                self._walk(kind, namespace)

    def resolve(self, schema: Any, namespace: str) -> tuple[Any, str]:
        """Follow name references and ``{"type": {...}}`` wrappers to a definition."""
        while True:
            if isinstance(schema, str) and schema not in _PRIMITIVE:
                full = schema if "." in schema else full_name(schema, namespace)
                found = self.types.get(full) or self.types.get(schema)
                if found is None:
                    return schema, namespace
                return found[0], found[1]
            if isinstance(schema, dict) and isinstance(schema.get("type"), dict | list):
                schema = schema["type"]
                continue
            if isinstance(schema, dict) and schema.get("type") in _PRIMITIVE and len(schema) == 1:
                return schema["type"], namespace
            if isinstance(schema, dict) and schema.get("type") in _NAMED:
                # names inside a named type are relative to its own namespace
                own = full_name(schema["name"], schema.get("namespace", namespace)).rpartition(".")[0]
                return schema, own
            return schema, namespace


def full_name(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def kind_of(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        kind = schema["type"]
        return kind if isinstance(kind, str) else kind_of(kind)
    return str(schema)


def logical_type(schema: Any) -> str | None:
    return schema.get("logicalType") if isinstance(schema, dict) else None
