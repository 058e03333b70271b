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
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Final

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from cdc import __version__
from cdc.errors import SchemaError
from cdc.events import (
    CONNECTOR,
    ChangeEvent,
    SourceInfo,
    Table,
    TableColumn,
    event_topic,
    messages_topic,
    schemas_topic,
    table_topic,
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
_PRIMITIVE: Final = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


# -- the fixed pieces in schemas/ -----------------------------------------------------------


def schemas_dir() -> Traversable:
    """Where the ``.avsc`` files are: ``cdc/schemas`` in a wheel, ``schemas/`` in a checkout."""
    packaged = resources.files("cdc").joinpath("schemas")
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / "schemas"
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


def canonical_form(schema: Any) -> str:
    """The Parsing Canonical Form of the Avro specification."""
    result: str = to_parsing_canonical_form(parse(schema))
    return result


def fingerprint(canonical: str) -> bytes:
    """CRC-64-AVRO of a canonical form, as the 8 little-endian bytes single-object encoding uses."""
    return bytes.fromhex(_fastavro_fingerprint(canonical, "CRC-64-AVRO"))


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


# -- backward compatibility (Avro schema resolution) --------------------------------------

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
_PROMOTIONS: Final = {
    ("int", "long"),
    ("int", "float"),
    ("int", "double"),
    ("long", "float"),
    ("long", "double"),
    ("float", "double"),
    ("string", "bytes"),
    ("bytes", "string"),
}


@dataclass(slots=True, frozen=True)
class Incompatibility:
    """Why data written with the old schema cannot be read with the new one, and where."""

    path: tuple[str, ...]  # field names (the Postgres column names where known)
    reason: str

    def __str__(self) -> str:
        return f"{'.'.join(self.path) or '<root>'}: {self.reason}"


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


def _describe(schema: Any) -> str:
    kind = kind_of(schema)
    if kind == "union":
        return " | ".join(_describe(b) for b in schema)
    logical = logical_type(schema)
    if logical == "decimal":
        return f"{kind} decimal({schema.get('precision')},{schema.get('scale', 0)})"
    if logical:
        return f"{kind} {logical}"
    if kind in _NAMED:
        return f"{kind} {schema['name']}"
    if kind == "array":
        return f"array<{_describe(schema['items'])}>"
    if kind == "map":
        return f"map<{_describe(schema['values'])}>"
    return kind


class _Checker:
    def __init__(self, reader: Any, writer: Any) -> None:
        self.r = NamedTypes(reader)
        self.w = NamedTypes(writer)
        self.active: set[tuple[int, int]] = set()

    def check(
        self, reader: Any, rns: str, writer: Any, wns: str, path: tuple[str, ...]
    ) -> list[Incompatibility]:
        reader, rns = self.r.resolve(reader, rns)
        writer, wns = self.w.resolve(writer, wns)
        wkind, rkind = kind_of(writer), kind_of(reader)
        if wkind == "union":
            return [p for branch in writer for p in self.check(reader, rns, branch, wns, path)]
        if rkind == "union":
            attempts = [self.check(branch, rns, writer, wns, path) for branch in reader]
            if any(not a for a in attempts):
                return []
            same_kind = [
                a
                for branch, a in zip(reader, attempts, strict=True)
                if kind_of(self.r.resolve(branch, rns)[0]) == wkind
            ]
            if len(same_kind) == 1:
                return same_kind[0]
            # a null branch does not matter to a non-null value: leave it out of the message
            wanted = [b for b in reader if b != "null"] if writer != "null" else reader
            target = _describe(wanted[0] if len(wanted) == 1 else wanted)
            return [Incompatibility(path, f"{_describe(writer)} cannot be read as {target}")]
        return self._check_one(reader, rns, writer, wns, path, rkind, wkind)

    def _check_one(
        self, reader: Any, rns: str, writer: Any, wns: str, path: tuple[str, ...], rkind: str, wkind: str
    ) -> list[Incompatibility]:
        if rkind != wkind and (wkind, rkind) not in _PROMOTIONS:
            return [Incompatibility(path, f"{_describe(writer)} cannot be read as {_describe(reader)}")]
        if rkind in _NAMED:
            rname, wname = reader["name"].rpartition(".")[2], writer["name"].rpartition(".")[2]
            aliases = {a.rpartition(".")[2] for a in reader.get("aliases", ())}
            if rname != wname and wname not in aliases:
                return [Incompatibility(path, f"{rkind} {wname} is renamed to {rname} without an alias")]
        if rkind == "record":
            pair = (id(reader), id(writer))
            if pair in self.active:  # a recursive type: already being checked higher up
                return []
            self.active.add(pair)
            try:
                return self._record(reader, rns, writer, wns, path)
            finally:
                self.active.discard(pair)
        if rkind == "enum":
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            if missing and "default" not in reader:
                return [
                    Incompatibility(
                        path, f"enum symbols {', '.join(missing)} are gone and there is no default"
                    )
                ]
            return []
        if rkind == "fixed" and reader["size"] != writer["size"]:
            return [Incompatibility(path, f"fixed size changes from {writer['size']} to {reader['size']}")]
        if rkind == "array":
            return self.check(reader["items"], rns, writer["items"], wns, path)
        if rkind == "map":
            return self.check(reader["values"], rns, writer["values"], wns, path)
        return self._logical_meaning(reader, writer, path)

    def _record(
        self, reader: dict[str, Any], rns: str, writer: dict[str, Any], wns: str, path: tuple[str, ...]
    ) -> list[Incompatibility]:
        written = {f["name"]: f for f in writer["fields"]}
        problems: list[Incompatibility] = []
        for rfield in reader["fields"]:
            where = (*path, rfield.get("pg.name", rfield["name"]))
            wfield = written.get(rfield["name"])
            if wfield is None:
                wfield = next((written[a] for a in rfield.get("aliases", ()) if a in written), None)
            if wfield is not None:
                problems += self.check(rfield["type"], rns, wfield["type"], wns, where)
            elif "default" not in rfield:
                problems.append(Incompatibility(where, "is new and has no default, old data lacks it"))
        return problems

    @staticmethod
    def _logical_meaning(reader: Any, writer: Any, path: tuple[str, ...]) -> list[Incompatibility]:
        """Stricter than plain resolution: a changed meaning of the same bytes is a break too."""
        rlog, wlog = logical_type(reader), logical_type(writer)
        if rlog == "decimal" and wlog == "decimal":
            if reader.get("scale", 0) != writer.get("scale", 0):
                return [
                    Incompatibility(
                        path, f"decimal scale changes: {_describe(writer)} -> {_describe(reader)}"
                    )
                ]
            if reader.get("precision", 0) < writer.get("precision", 0):
                return [
                    Incompatibility(
                        path, f"decimal precision shrinks: {_describe(writer)} -> {_describe(reader)}"
                    )
                ]
            return []
        rmeaning = rlog if rlog in _MEANINGFUL_LOGICAL else None
        wmeaning = wlog if wlog in _MEANINGFUL_LOGICAL else None
        if rmeaning != wmeaning:
            return [Incompatibility(path, f"{_describe(writer)} would be read as {_describe(reader)}")]
        return []


def check_backward(reader: Any, writer: Any) -> list[Incompatibility]:
    """What stops a reader with schema ``reader`` from reading data written with ``writer``.

    The Avro specification's schema resolution (promotions, unions, defaults
    for new fields, names and aliases, enum symbols, fixed sizes), plus one
    stricter rule: the same bytes under a different logical type (another
    decimal scale, a date read as a plain int, ...) count as incompatible.
    An empty list means backward compatible.
    """
    checker = _Checker(reader, writer)
    problems = checker.check(reader, "", writer, "", ())
    unique: dict[str, Incompatibility] = {}
    for problem in problems:
        unique.setdefault(str(problem), problem)
    return list(unique.values())


# -- the registry of writer schemas -----------------------------------------------------------


@dataclass(slots=True, frozen=True)
class RegisteredSchema:
    """One writer schema with its place in the schema topic."""

    fingerprint: bytes
    subject: str
    version: int
    topic: str
    kind: str  # "key" or "value"
    schema: dict[str, Any]
    canonical: str

    @property
    def json(self) -> str:
        return schema_json(self.schema)


def _without_docs(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_docs(v) for k, v in schema.items() if k != "doc"}
    if isinstance(schema, list):
        return [_without_docs(v) for v in schema]
    return schema


class SchemaRegistry:
    """Writer schemas by fingerprint and by subject, as on the schema topic."""

    def __init__(self) -> None:
        self.by_fingerprint: dict[bytes, RegisteredSchema] = {}
        self.subjects: dict[str, dict[int, RegisteredSchema]] = {}

    def __iter__(self) -> Iterator[RegisteredSchema]:
        return iter(self.by_fingerprint.values())

    def __len__(self) -> int:
        return len(self.by_fingerprint)

    def get(self, fp: bytes) -> RegisteredSchema | None:
        return self.by_fingerprint.get(fp)

    def latest(self, subject: str) -> RegisteredSchema | None:
        versions = self.subjects.get(subject)
        return versions[max(versions)] if versions else None

    def next_version(self, subject: str) -> int:
        versions = self.subjects.get(subject)
        return max(versions) + 1 if versions else 1

    def add(self, entry: RegisteredSchema) -> None:
        old = self.by_fingerprint.get(entry.fingerprint)
        if old is not None:
            self.subjects.get(old.subject, {}).pop(old.version, None)
        self.by_fingerprint[entry.fingerprint] = entry
        self.subjects.setdefault(entry.subject, {})[entry.version] = entry

    def owns(self, fp: bytes, subject: str, schema: dict[str, Any]) -> bool | None:
        """None: ``fp`` is free; True: it is this subject's same schema; False: a clash."""
        old = self.by_fingerprint.get(fp)
        if old is None:
            return None
        return old.subject == subject and _without_docs(old.schema) == _without_docs(schema)

    def load(self, key: bytes | None, value: bytes | None) -> RegisteredSchema | None:
        """Add one record of the schema topic (None for a deletion marker); SchemaError if malformed."""
        if value is None:
            if key is not None and key in self.by_fingerprint:
                old = self.by_fingerprint.pop(key)
                self.subjects.get(old.subject, {}).pop(old.version, None)
            return None
        entry = decode_schema_record(value)
        if key is not None and key != entry.fingerprint:
            raise SchemaError(
                f"schema record key {key.hex()} differs from its fingerprint {entry.fingerprint.hex()}: "
                "the schema topic holds records cdc did not write"
            )
        self.add(entry)
        return entry


@cache
def _schema_record_codec() -> tuple[Any, bytes]:
    schema = fixed_schema("schema_record")
    return parse(schema), MAGIC + fingerprint(canonical_form(schema))


def encode_schema_record(entry: RegisteredSchema) -> tuple[bytes, bytes]:
    """(key, value) of the schema topic record announcing ``entry``."""
    parsed, header = _schema_record_codec()
    buf = io.BytesIO()
    buf.write(header)
    record = {
        "fingerprint": entry.fingerprint,
        "subject": entry.subject,
        "version": entry.version,
        "topic": entry.topic,
        "kind": entry.kind,
        "schema": entry.json,
        "canonical": entry.canonical,
    }
    schemaless_writer(buf, parsed, record)
    return entry.fingerprint, buf.getvalue()


def decode_schema_record(value: bytes) -> RegisteredSchema:
    """A schema topic value back into a `RegisteredSchema`, checking its fingerprint."""
    parsed, header = _schema_record_codec()
    if value[:HEADER_SIZE] != header:
        raise SchemaError(
            f"schema topic record does not start with the cdc.SchemaRecord header {header.hex()}: "
            "it was not written by this version of cdc"
        )
    try:
        record: dict[str, Any] = read_body(value[HEADER_SIZE:], parsed)
        schema = json.loads(record["schema"])
    except (SchemaError, ValueError) as exc:
        raise SchemaError(f"malformed schema topic record: {exc}") from None
    canonical = canonical_form(schema)
    fp = fingerprint(canonical)
    if fp != record["fingerprint"]:
        raise SchemaError(
            f"schema record {record['subject']} v{record['version']} claims fingerprint "
            f"{record['fingerprint'].hex()} but its schema has {fp.hex()}"
        )
    return RegisteredSchema(
        fp, record["subject"], record["version"], record["topic"], record["kind"], schema, canonical
    )


# -- encoding ---------------------------------------------------------------------------------
#
# The per-row path. Avro binary has no framing: a record is its fields'
# encodings one after the other, a union is the branch index then the value.
# So the envelope is assembled from parts built once per table version (the
# record header, the constant head of the source block), once per transaction
# and per event, and each column has an encoder chosen once from its Avro
# type: plain Python for the primitive and logical types of cdc.pgtypes (about
# 2x faster than fastavro's generic writer, which validates each union
# branch), fastavro's schemaless writer for everything else. The tests check
# the result byte for byte against fastavro writing the whole envelope.

Encoder = Callable[[Any], bytes]
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_INT64_MIN, _INT64_END = -(1 << 63), 1 << 63


def _varint_slow(z: int) -> bytes:
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


# A varint is 7-bit groups, low first, with the high bit set on all but the last
# byte. Tables of 14-bit groups turn the per-byte loop into at most five lookups
# and concatenations: about twice as fast for the 4-8 byte LSNs and timestamps.
_FINAL: Final = tuple(_varint_slow(z) for z in range(1 << 14))
_MIDDLE: Final = tuple(bytes(((g & 0x7F) | 0x80, ((g >> 7) & 0x7F) | 0x80)) for g in range(1 << 14))


def _varint(n: int) -> bytes:
    """An Avro int/long: zig-zag, then base-128 varint."""
    z = (n << 1) ^ (n >> 63)
    if z < 0x4000:
        if z < 0:
            raise OverflowError(f"{n} does not fit an Avro long")
        return _FINAL[z]
    if z < 0x10000000:
        return _MIDDLE[z & 0x3FFF] + _FINAL[z >> 14]
    if z < 0x40000000000:
        return _MIDDLE[z & 0x3FFF] + _MIDDLE[(z >> 14) & 0x3FFF] + _FINAL[z >> 28]
    if z < 0x100000000000000:
        return (
            _MIDDLE[z & 0x3FFF] + _MIDDLE[(z >> 14) & 0x3FFF] + _MIDDLE[(z >> 28) & 0x3FFF] + _FINAL[z >> 42]
        )
    if not _INT64_MIN <= n < _INT64_END:
        raise OverflowError(f"{n} does not fit an Avro long")
    return (
        _MIDDLE[z & 0x3FFF]
        + _MIDDLE[(z >> 14) & 0x3FFF]
        + _MIDDLE[(z >> 28) & 0x3FFF]
        + _MIDDLE[(z >> 42) & 0x3FFF]
        + _FINAL[z >> 56]
    )


_long = _varint


def _int(n: int) -> bytes:
    if not -(1 << 31) <= n < 1 << 31:
        raise OverflowError(f"{n} does not fit an Avro int")
    return _long(n)


def _string(text: str) -> bytes:
    data = text.encode()
    return _long(len(data)) + data


def _bytes(data: bytes) -> bytes:
    return _long(len(data)) + data


def _boolean(value: bool) -> bytes:
    if value.__class__ is not bool:
        raise TypeError(f"{value!r} is not a bool")
    return b"\x01" if value else b"\x00"


def _nullable_string(text: str | None) -> bytes:
    return b"\x00" if text is None else b"\x02" + _string(text)


def _decimal_encoder(precision: int, scale: int) -> Encoder:
    """Decimal -> two's-complement big-endian unscaled integer, as the decimal logical type says."""
    limit: int = 10**precision
    factor: int = 10**scale

    def encode(value: Decimal) -> bytes:
        numerator, denominator = value.as_integer_ratio()
        unscaled, remainder = divmod(numerator * factor, denominator)
        if remainder:
            raise ValueError(f"{value} has more than {scale} decimal places")
        if not -limit < unscaled < limit:
            raise ValueError(f"{value} has more than {precision} digits")
        data = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
        return _long(len(data)) + data

    return encode


def _fastavro_encoder(schema: Any) -> Encoder:
    parsed = parse(schema)

    def encode(value: Any) -> bytes:
        buf = io.BytesIO()
        schemaless_writer(buf, parsed, value)
        return buf.getvalue()

    return encode


_PRIMITIVE_ENCODERS: Final[dict[str, Encoder]] = {
    "int": _int,
    "long": _long,
    "string": _string,
    "bytes": _bytes,
    "boolean": _boolean,
    "double": _DOUBLE.pack,
    "float": _FLOAT.pack,
}


def _branch_encoder(schema: Any) -> Encoder:
    """The encoder of a non-null value of one (non-union) Avro type."""
    kind, logical = kind_of(schema), logical_type(schema)
    if logical == "decimal" and kind == "bytes":
        return _decimal_encoder(int(schema["precision"]), int(schema.get("scale", 0)))
    if logical is None or logical in _MEANINGFUL_LOGICAL or logical == "uuid":
        # date, time and timestamps are ints in cdc.pgtypes, uuid a str: the underlying type's encoding
        primitive = _PRIMITIVE_ENCODERS.get(kind)
        if primitive is not None and (logical is None or kind in ("int", "long", "string")):
            return primitive
    return _fastavro_encoder(schema)


def _special_decimal(value: Any) -> str | None:
    """NaN and infinities of a numeric(p,s) column, which the decimal type cannot hold, as text."""
    if value.__class__ is Decimal and not value.is_finite():
        return "NaN" if value.is_nan() else ("-Infinity" if value.is_signed() else "Infinity")
    return None


def column_encoder(avro_type: Any) -> Encoder:
    """The encoder of a column value (None included when ``avro_type`` is a union with null)."""
    if not isinstance(avro_type, list):
        return _branch_encoder(avro_type)
    index = [_long(i) for i in range(len(avro_type))]
    null = next((index[i] for i, b in enumerate(avro_type) if b == "null"), None)
    others = [(i, b) for i, b in enumerate(avro_type) if b != "null"]
    if len(others) == 1:
        ((at, branch),) = others
        tag, encode = index[at], _branch_encoder(branch)

        def one(value: Any) -> bytes:
            if value is None and null is not None:
                return null
            return tag + encode(value)

        return one
    strings = [i for i, b in others if b == "string"]
    rest = [(i, b) for i, b in others if b != "string"]
    if len(others) == 2 and len(strings) == 1 and kind_of(rest[0][1]) != "string":
        # [X, "string"]: the string branch carries TOAST placeholders and NaN of numeric(p,s)
        string_tag, (at, branch) = index[strings[0]], rest[0]
        tag, encode = index[at], _branch_encoder(branch)
        is_decimal = logical_type(branch) == "decimal"

        def with_string(value: Any) -> bytes:
            if value is None and null is not None:
                return null
            if value.__class__ is str:
                return string_tag + _string(value)
            if is_decimal and (text := _special_decimal(value)) is not None:
                return string_tag + _string(text)
            return tag + encode(value)

        return with_string
    return _fastavro_encoder(avro_type)


def _column_expression(index: int, avro_type: Any, env: dict[str, Any]) -> str:
    """A Python expression encoding ``v<index>`` as ``avro_type``: the common shapes written out,
    the rest a call of its `column_encoder` (same bytes either way; the tests compare with fastavro)."""
    value = f"v{index}"
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    null = branches.index("null") if "null" in branches else None
    others = [(i, b) for i, b in enumerate(branches) if b != "null"]

    def plain(branch: Any) -> str | None:
        kind, logical = kind_of(branch), logical_type(branch)
        if logical not in (None, "uuid", *_MEANINGFUL_LOGICAL) or logical == "decimal":
            return None
        if kind == "long":
            return f"L({value})"
        if kind == "string" and (logical is None or logical == "uuid"):
            return f"S({value})"
        if kind == "boolean" and logical is None:
            return f"BOOL({value})"
        return None

    expr: str | None = None
    if len(others) == 1 and (inner := plain(others[0][1])) is not None:
        expr = inner if null is None else f"T{index} + {inner}"
        env[f"T{index}"] = _long(others[0][0])
    elif len(others) == 2 and others[1][1] == "string" and kind_of(others[0][1]) == "long":
        # [timestamp long, "string"]: instants beyond int64 microseconds travel as text
        long_expr = plain(others[0][1])
        if long_expr is not None:
            env[f"T{index}"], env[f"U{index}"] = _long(others[0][0]), _long(others[1][0])
            expr = f"(U{index} + S({value}) if {value}.__class__ is str else T{index} + {long_expr})"
    if expr is None:
        env[f"E{index}"] = column_encoder(avro_type)
        return f"E{index}({value})"
    if null is not None:
        env[f"N{index}"] = _long(null)
        return f"(N{index} if {value} is None else {expr})"
    return expr


def _row_encoder(types: list[Any]) -> Callable[[list[Any]], bytes]:
    """One function per table version encoding a row of wire values, generated from its column types.

    Calling one small encoder per column costs a Python call each; a generated
    function with the common cases inlined costs one call per row.
    """
    env: dict[str, Any] = {"L": _long, "S": _string, "BOOL": _boolean, "join": b"".join}
    if not types:
        return lambda row: b""
    names = ", ".join(f"v{i}" for i in range(len(types)))
    parts = ", ".join(_column_expression(i, t, env) for i, t in enumerate(types))
    source = f"def encode(row):\n    {names}, = row\n    return join(({parts},))\n"
    exec(compile(source, "<cdc.avro row encoder>", "exec"), env)  # noqa: S102 - our own generated code
    encode: Callable[[list[Any]], bytes] = env["encode"]
    return encode


_OPS: Final = {op: _string(op) for op in ("c", "u", "d", "r", "t", "m")}
_ENCODE_ERRORS: Final = (ValueError, TypeError, OverflowError, AttributeError, KeyError, struct.error)


@dataclass(slots=True)
class _TableCodec:
    """Everything per table version that the per-row path needs, built once."""

    table: Table
    topic: str
    value_fields: list[dict[str, Any]]
    row: Callable[[list[Any]], bytes]
    key: Callable[[list[Any]], bytes] | None
    value_header: bytes
    key_header: bytes | None
    source_head: bytes  # connector .. table of the source block


@dataclass(slots=True)
class Registration:
    """A schema this serializer registered: its compatibility with the subject's previous version."""

    schema: RegisteredSchema
    previous_version: int | None
    problems: list[Incompatibility] = field(default_factory=list)

    @property
    def compatible(self) -> bool:
        return not self.problems


class AvroSerializer:
    """Change events -> (key, value) in Avro single-object encoding, plus the schema records.

    Call `encode` (or `encode_key`), then `take_schema_records` and produce
    those to `schema_topic` and wait for their acknowledgement before
    producing the data record. Schemas are built once per table version;
    values are the wire values of `cdc.pgtypes`. Raises `SchemaError` when a
    value does not fit its column's Avro type.
    """

    def __init__(self, topic_prefix: str, source: SourceInfo) -> None:
        self.topic_prefix = topic_prefix
        self.source = source
        self.schema_topic = schemas_topic(topic_prefix)
        self.registry = SchemaRegistry()
        self.registrations: list[Registration] = []
        self._pending: list[tuple[bytes, bytes]] = []
        self._codecs: dict[int, _TableCodec] = {}
        self._txn_key: tuple[Any, ...] | None = None
        self._txn_parts: tuple[bytes, bytes, bytes] = (b"", b"", b"")
        self._now_ms = -1
        self._now_bytes = b""
        self._message_headers: tuple[bytes, bytes] | None = None
        self._side: dict[tuple[str, str], tuple[bytes, Encoder, bytes, Encoder]] = {}
        message_schema()  # the fixed pieces load now: a broken installation fails here, not mid-stream
        self._message_source_head = (
            _string(CONNECTOR)
            + _string(__version__)
            + _string(source.name)
            + _string(source.db)
            + b"\x00\x00"
        )

    # -- what the connector calls

    def encode(self, event: ChangeEvent, now_ms: int | None = None) -> tuple[bytes | None, bytes]:
        """(key, value) of ``event`` for its topic (`topic_for`); key None without one."""
        table = event.table
        if table is None:
            return self._encode_message(event, now_ms)
        codec = self._codecs.get(table.relation_id)
        if codec is None or codec.table is not table:
            codec = self._codec(table)
        try:
            before = b"\x00" if event.before is None else b"\x02" + codec.row(event.before)
            after = b"\x00" if event.after is None else b"\x02" + codec.row(event.after)
        except _ENCODE_ERRORS as exc:
            raise _row_error(codec, event, exc) from None
        value = b"".join((codec.value_header, before, after, codec.source_head, *self._tail(event, now_ms)))
        key = None
        if codec.key is not None and event.op != "t":
            values = event.key_values()
            if values is not None:
                key = self._encode_key(codec, values)
        return key, value

    def encode_key(self, table: Table, key: list[Any]) -> bytes | None:
        """The key alone (for tombstones); None when ``table`` has no key."""
        codec = self._codecs.get(table.relation_id)
        if codec is None or codec.table is not table:
            codec = self._codec(table)
        return self._encode_key(codec, key)

    def encode_fixed(
        self, kind: str, topic: str, key: dict[str, Any], value: dict[str, Any]
    ) -> tuple[bytes, bytes]:
        """A record of a side topic (``transaction``, ``heartbeat``) in its fixed schema."""
        codec = self._side.get((kind, topic))
        if codec is None:
            key_name, value_name = SIDE_SCHEMAS[kind]
            key_entry, key_header = self._register(
                topic, "key", lambda _variant: copy.deepcopy(fixed_schema(key_name))
            )
            value_entry, value_header = self._register(
                topic, "value", lambda _variant: copy.deepcopy(fixed_schema(value_name))
            )
            codec = (
                key_header,
                _fastavro_encoder(key_entry.schema),
                value_header,
                _fastavro_encoder(value_entry.schema),
            )
            self._side[(kind, topic)] = codec
        key_header, encode_key, value_header, encode_value = codec
        try:
            return key_header + encode_key(key), value_header + encode_value(value)
        except _ENCODE_ERRORS as exc:
            raise SchemaError(f"cannot encode a {kind} record: {exc}") from None

    def take_schema_records(self) -> Sequence[tuple[bytes, bytes]]:
        """(key, value) records for the schema topic registered since the last call."""
        if not self._pending:
            return ()  # the per-event case: no allocation
        records, self._pending = self._pending, []
        return records

    # -- also useful

    def topic_for(self, event: ChangeEvent) -> str:
        return event_topic(self.topic_prefix, event)

    def load_schema_records(self, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
        """Start from what the schema topic already holds (after a restart), so versions continue."""
        for key, value in records:
            self.registry.load(key, value)

    # -- internals

    def _encode_key(self, codec: _TableCodec, key: list[Any]) -> bytes | None:
        if codec.key is None or codec.key_header is None:
            return None
        try:
            return codec.key_header + codec.key(key)
        except _ENCODE_ERRORS as exc:
            raise SchemaError(
                f"cannot encode the key of {codec.table.qualified_name}: {exc}; "
                "the key values do not match its columns' types"
            ) from None

    def _tail(self, event: ChangeEvent, now_ms: int | None) -> tuple[bytes, ...]:
        """The parts after the source head: txId, lsn, commit_lsn, ts_ms, snapshot, op, ts_ms, transaction."""
        txn_key = (event.xid, event.commit_lsn, event.commit_ts_ms, event.snapshot, event.transaction_id)
        if txn_key != self._txn_key:
            self._txn_key = txn_key
            self._txn_parts = (
                _long(event.xid),
                _long(event.commit_lsn) + _long(event.commit_ts_ms) + _nullable_string(event.snapshot),
                b"\x00" if event.transaction_id is None else b"\x02" + _string(event.transaction_id),
            )
        txid, source_tail, txn_head = self._txn_parts
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        if now_ms != self._now_ms:
            self._now_ms, self._now_bytes = now_ms, _long(now_ms)
        op = _OPS.get(event.op)
        if op is None:
            raise SchemaError(f"unknown op {event.op!r}: expected one of {', '.join(_OPS)}")
        lsn = _long(event.lsn)
        if event.transaction_id is None:
            return txid, lsn, source_tail, op, self._now_bytes, txn_head
        order = _long(event.total_order) + _long(event.data_collection_order)
        return txid, lsn, source_tail, op, self._now_bytes, txn_head, order

    def _encode_message(self, event: ChangeEvent, now_ms: int | None) -> tuple[bytes, bytes]:
        """A logical message: keyed by its prefix, the value in the fixed message envelope."""
        if self._message_headers is None:
            topic = messages_topic(self.topic_prefix)
            value_header = self._register(topic, "value", lambda _variant: message_schema())[1]
            key_header = self._register(
                topic, "key", lambda _variant: copy.deepcopy(fixed_schema("message_key"))
            )[1]
            self._message_headers = (key_header, value_header)
        key_header, value_header = self._message_headers
        prefix = _string(event.message_prefix or "")
        message = prefix + _bytes(event.message_content or b"")
        value = b"".join((value_header, message, self._message_source_head, *self._tail(event, now_ms)))
        return key_header + prefix, value

    def _codec(self, table: Table) -> _TableCodec:
        topic = table_topic(self.topic_prefix, table)
        value, value_header = self._register(topic, "value", lambda v: value_schema(table, topic, v))
        value_fields: list[dict[str, Any]] = value.schema["fields"][0]["type"][1]["fields"]
        key_header = key = None
        if table.has_key:
            entry, key_header = self._register(topic, "key", lambda v: key_schema(table, topic, v) or {})
            key = _row_encoder([f["type"] for f in entry.schema["fields"]])
        source = self.source
        codec = _TableCodec(
            table=table,
            topic=topic,
            value_fields=value_fields,
            row=_row_encoder([f["type"] for f in value_fields]),
            key=key,
            value_header=value_header,
            key_header=key_header,
            source_head=(
                _string(CONNECTOR)
                + _string(__version__)
                + _string(source.name)
                + _string(source.db)
                + _nullable_string(table.schema)
                + _nullable_string(table.name)
            ),
        )
        self._codecs[table.relation_id] = codec
        return codec

    def _register(
        self, topic: str, kind: str, build: Callable[[int], dict[str, Any]]
    ) -> tuple[RegisteredSchema, bytes]:
        """Find or register the schema ``build(variant)`` for ``topic``; (entry, record header)."""
        subject = f"{topic}-{kind}"
        for variant in range(100):
            schema = build(variant)
            canonical = canonical_form(schema)
            fp = fingerprint(canonical)
            owned = self.registry.owns(fp, subject, schema)
            if owned is False:
                continue  # same canonical form, another meaning or subject: try the next variant
            if owned is True:
                entry = self.registry.get(fp)
                assert entry is not None
                return entry, MAGIC + fp
            previous = self.registry.latest(subject)
            entry = RegisteredSchema(
                fp, subject, self.registry.next_version(subject), topic, kind, schema, canonical
            )
            self.registry.add(entry)
            self._pending.append(encode_schema_record(entry))
            self.registrations.append(_report(entry, previous))
            return entry, MAGIC + fp
        raise SchemaError(
            f"no free fingerprint for {subject} after 100 variants: a bug in cdc, please report it"
        )


def _report(entry: RegisteredSchema, previous: RegisteredSchema | None) -> Registration:
    """Check a new version against the previous one of its subject and log the result."""
    if previous is None:
        log.info("schema %s v%d registered (%s)", entry.subject, entry.version, entry.fingerprint.hex())
        return Registration(entry, None)
    problems = check_backward(entry.schema, previous.schema)
    if entry.kind == "value":  # before.x and after.x are the same column
        unique: dict[str, Incompatibility] = {}
        for p in problems:
            path = p.path[1:] if p.path[:1] in (("before",), ("after",)) else p.path
            unique.setdefault(str(Incompatibility(path, p.reason)), Incompatibility(path, p.reason))
        problems = list(unique.values())
    if problems:
        log.warning(
            "schema %s v%d is not backward compatible with v%d (streamed anyway; a reader with the new "
            "schema cannot read the old records): %s",
            entry.subject,
            entry.version,
            previous.version,
            "; ".join(f"column {p}" for p in problems),
        )
    else:
        log.info(
            "schema %s v%d registered (%s), backward compatible with v%d",
            entry.subject,
            entry.version,
            entry.fingerprint.hex(),
            previous.version,
        )
    return Registration(entry, previous.version, problems)


def _row_error(codec: _TableCodec, event: ChangeEvent, exc: Exception) -> SchemaError:
    """Name the column whose value does not fit (the slow path, only on failure)."""
    for row in (event.before, event.after):
        if row is None or len(row) != len(codec.value_fields):
            continue
        for column, spec, value in zip(codec.table.columns, codec.value_fields, row, strict=True):
            try:
                column_encoder(spec["type"])(value)
            except _ENCODE_ERRORS as column_exc:
                return SchemaError(
                    f"cannot encode column {column.name} ({column.type.name}) of "
                    f"{codec.table.qualified_name}: {type(value).__name__} {column_exc}; "
                    f"its Avro type is {_describe(spec['type'])}, so cdc.pgtypes parsed it wrongly"
                )
    return SchemaError(
        f"cannot encode a row of {codec.table.qualified_name} (version {codec.table.version}): {exc}; "
        "the row does not match the table's columns"
    )
