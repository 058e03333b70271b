"""The downstream side: read change topics, decode any schema version, render JSON.

A record of a cdc topic is Avro single-object encoded: ``C3 01``, the
writer schema's fingerprint, the body. The writer schemas come from the
``<prefix>.schemas`` topic (`cdc.avro`), read to its end at start and again
whenever a record names a fingerprint not seen yet.

Values are decoded raw (the writer schema with its logical types removed, so
dates and timestamps stay the integers cdc wrote: Python datetimes cannot hold
infinities, BC or years past 9999) and rendered with `cdc.pgtypes`: each
column field carries ``pg.oid`` / ``pg.typmod``, whose `ColumnType.render` is
the one the JSON format uses. A column whose type this cdc does not know
(another database's enum, a domain) is rendered from its Avro type instead.
Records of ``--format json`` topics are already rendered: they pass as they are.

Use it from Python::

    with ChangeConsumer(["shop.public.orders"], "localhost:9092", from_beginning=True) as consumer:
        for record in consumer.records(idle_timeout=5):
            print(record.value if record.error is None else record.error)
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import orjson

from cdc import avro
from cdc.errors import SchemaError, SinkError
from cdc.events import schemas_topic
from cdc.kafka import (
    ClientConfig,
    Message,
    Rebalance,
    SchemaTopicReader,
    TopicReader,
    as_client,
    read_schema_records,
)
from cdc.pgtypes import ColumnType, column_type

log = logging.getLogger(__name__)

Render = Callable[[Any], Any]

#: OIDs of the built-in types a bare Avro type stands for (Avro type or logical type -> OID).
_OID_OF_AVRO: Final = {
    "boolean": 16,
    "int": 23,
    "long": 20,
    "float": 700,
    "double": 701,
    "string": 25,
    "bytes": 17,
    "enum": 25,
    "fixed": 17,
    "date": 1082,
    "time-micros": 1083,
    "timestamp-micros": 1184,
    "local-timestamp-micros": 1114,
    "uuid": 2950,
    "decimal": 1700,
}
#: element OID -> array OID, for arrays rendered from their Avro type
_ARRAY_OF: Final = {
    16: 1000,
    17: 1001,
    20: 1016,
    23: 1007,
    25: 1009,
    700: 1021,
    701: 1022,
    1082: 1182,
    1083: 1183,
    1114: 1115,
    1184: 1185,
    1700: 1231,
    2950: 2951,
}
_FLOAT = struct.Struct("<f")


# -- rendering ----------------------------------------------------------------------------------


def _strip_logical(schema: Any) -> Any:
    """A copy of ``schema`` without logical types, so fastavro returns the wire values."""
    if isinstance(schema, dict):
        return {k: _strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical(v) for v in schema]
    return schema


def _float32(value: float) -> float:
    """Undo the widening of an Avro float: the shortest decimal that is the same float32."""
    if not math.isfinite(value):
        return value
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if _FLOAT.unpack(_FLOAT.pack(short))[0] == value:
            return short
    return value


def _decimal(scale: int) -> Callable[[bytes], Decimal]:
    def convert(data: bytes) -> Decimal:
        return Decimal(f"{int.from_bytes(data, 'big', signed=True)}e-{scale}")

    return convert


class _Compiler:
    """Builds the render function of one writer schema, once per fingerprint."""

    def __init__(self, schema: Any) -> None:
        self.names = avro.NamedTypes(schema)
        self.records: dict[str, Render] = {}

    def resolve(self, schema: Any, namespace: str) -> tuple[Any, str]:
        return self.names.resolve(schema, namespace)

    def render(self, schema: Any, namespace: str) -> Render:
        schema, namespace = self.resolve(schema, namespace)
        kind = avro.kind_of(schema)
        if kind == "union":
            return self._union(
                [self.render(b, namespace) for b in schema], [self.resolve(b, namespace)[0] for b in schema]
            )
        if kind in ("record", "error"):
            return self._record(schema, namespace)
        if kind == "array":
            items = self.render(schema["items"], namespace)
            return lambda value: [items(v) for v in value]
        if kind == "map":
            values = self.render(schema["values"], namespace)
            return lambda value: {k: values(v) for k, v in value.items()}
        return self._leaf(schema, namespace)

    def _record(self, schema: dict[str, Any], namespace: str) -> Render:
        full = avro.full_name(schema["name"], schema.get("namespace", namespace))
        known = self.records.get(full)
        if known is not None:
            return known
        own = full.rpartition(".")[0]
        fields: list[tuple[str, str, Render]] = []

        def render(value: dict[str, Any]) -> dict[str, Any]:
            return {out: r(value[name]) for name, out, r in fields}

        self.records[full] = render
        for f in schema["fields"]:
            out = f.get("pg.name", f["name"])
            r = self._column(f, own) if "pg.oid" in f else self.render(f["type"], own)
            fields.append((f["name"], out, r))
        return render

    @staticmethod
    def _union(renders: list[Render], branches: list[Any]) -> Render:
        choices = [(r, _python_types(b)) for r, b in zip(renders, branches, strict=True) if b != "null"]
        if len(choices) == 1:
            only = choices[0][0]
            return lambda value: None if value is None else only(value)

        def render(value: Any) -> Any:
            if value is None:
                return None
            for r, types in choices:
                if isinstance(value, types) and not (value.__class__ is bool and bool not in types):
                    return r(value)
            return value

        return render

    def _leaf(self, schema: Any, namespace: str) -> Render:
        ctype = self._avro_column_type(schema, namespace)
        convert = self._wire(schema, namespace)
        if ctype is None:
            return convert
        render = ctype.render
        return lambda value: _jsonable(render(convert(value)))

    def _avro_column_type(self, schema: Any, namespace: str) -> ColumnType | None:
        """The built-in Postgres type a bare Avro type stands for (None: render items one by one)."""
        schema, namespace = self.resolve(schema, namespace)
        kind = avro.kind_of(schema)
        logical = avro.logical_type(schema)
        if logical == "decimal":
            precision, scale = int(schema.get("precision", 0)), int(schema.get("scale", 0))
            return column_type(1700, ((precision << 16) | scale) + 4 if precision else -1)
        if kind == "array":
            items = [
                b
                for b in (schema["items"] if isinstance(schema["items"], list) else [schema["items"]])
                if b != "null"
            ]
            if len(items) != 1:
                return None
            element = self._avro_column_type(items[0], namespace)
            array = None if element is None else _ARRAY_OF.get(element.oid)
            return None if array is None or element is None else column_type(array, element.typmod)
        oid = _OID_OF_AVRO.get(logical or "") or _OID_OF_AVRO.get(kind)
        return None if oid is None else column_type(oid)

    def _wire(self, schema: Any, namespace: str) -> Render:
        """Raw decoded value -> the wire value of `cdc.pgtypes` (decimals, float32, arrays of them)."""
        schema, namespace = self.resolve(schema, namespace)
        kind = avro.kind_of(schema)
        if avro.logical_type(schema) == "decimal" and kind == "bytes":
            return _decimal(int(schema.get("scale", 0)))
        if kind == "float":
            return _float32
        if kind == "union":
            converters = [
                (self._wire(b, namespace), _python_types(self.resolve(b, namespace)[0]))
                for b in schema
                if b != "null"
            ]

            def union(value: Any) -> Any:
                if value is None:
                    return None
                for convert, types in converters:
                    if isinstance(value, types):
                        return convert(value)
                return value

            return union
        if kind == "array":
            items = self._wire(schema["items"], namespace)
            return lambda value: [items(v) for v in value]
        if kind in ("record", "map"):
            return self.render(schema, namespace)
        return _same

    def _column(self, field: dict[str, Any], namespace: str) -> Render:
        """A column: its cdc.pgtypes render, if this cdc maps its type to the same Avro type."""
        branches = field["type"] if isinstance(field["type"], list) else [field["type"]]
        branches = [b for b in branches if b != "null"]
        primary, _ = self.resolve(branches[0], namespace)
        ctype: ColumnType | None = column_type(int(field["pg.oid"]), int(field.get("pg.typmod", -1)))
        assert ctype is not None
        mine = ctype.avro if isinstance(ctype.avro, list) else [ctype.avro]
        if [b for b in mine if b != "null"] != branches:
            ctype = self._avro_column_type(primary, namespace)
        convert = self._wire(primary, namespace)
        render: Render = _same if ctype is None else ctype.render
        passthrough = any(b == "string" for b in branches[1:]) and avro.kind_of(primary) != "string"

        def column(value: Any) -> Any:
            if value is None:
                return None
            if passthrough and value.__class__ is str:
                return value  # the string branch: a TOAST placeholder, or NaN of numeric(p,s)
            return _jsonable(render(convert(value)))

        return column


def _same(value: Any) -> Any:
    return value


def _jsonable(value: Any) -> Any:
    """What the type table says for values a render left as Python objects (bytes, Decimal, NaN)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _python_types(schema: Any) -> tuple[type, ...]:
    """Python types fastavro returns for raw values of ``schema``."""
    kind = avro.kind_of(schema)
    types: dict[str, tuple[type, ...]] = {
        "null": (type(None),),
        "boolean": (bool,),
        "int": (int,),
        "long": (int,),
        "float": (float,),
        "double": (float,),
        "string": (str,),
        "enum": (str,),
        "bytes": (bytes,),
        "fixed": (bytes,),
        "array": (list,),
        "map": (dict,),
        "record": (dict,),
        "error": (dict,),
    }
    return types.get(kind, (object,))


@dataclass(slots=True)
class _Reader:
    entry: avro.RegisteredSchema
    parsed: Any
    render: Render


class RecordDecoder:
    """Single-object encoded bytes -> rendered, JSON-able values, for every registered schema."""

    def __init__(self, registry: avro.SchemaRegistry | None = None) -> None:
        self.registry = avro.SchemaRegistry() if registry is None else registry
        self._readers: dict[bytes, _Reader] = {}
        schema = avro.fixed_schema("schema_record")  # the schema topic's own records decode too
        canonical = avro.canonical_form(schema)
        self._builtin = avro.RegisteredSchema(
            avro.fingerprint(canonical), "cdc.SchemaRecord", 1, "", "value", schema, canonical
        )

    def knows(self, data: bytes) -> bool:
        fp = bytes(data[2 : avro.HEADER_SIZE])
        return fp == self._builtin.fingerprint or self.registry.get(fp) is not None

    def schema_of(self, data: bytes) -> avro.RegisteredSchema:
        """The writer schema of a record; SchemaError if not single-object encoded or unknown."""
        fp, _ = avro.split_single_object(data)
        entry = self._builtin if fp == self._builtin.fingerprint else self.registry.get(fp)
        if entry is None:
            raise SchemaError(f"unknown schema fingerprint {fp.hex()}: it is not in the schema topic")
        return entry

    def decode_raw(self, data: bytes) -> tuple[avro.RegisteredSchema, Any]:
        """(writer schema, the wire values as fastavro reads them without logical types)."""
        reader = self._reader(data)
        return reader.entry, avro.read_body(avro.split_single_object(data)[1], reader.parsed)

    def decode(self, data: bytes) -> Any:
        """The record rendered as the JSON format renders it (DESIGN.md's type table)."""
        reader = self._reader(data)
        return reader.render(avro.read_body(avro.split_single_object(data)[1], reader.parsed))

    def writer_schema(self, data: bytes) -> dict[str, Any] | None:
        """The full writer schema of an Avro record (with its ``pg.*`` column attributes), None for
        other formats; SchemaError if its schema is unknown."""
        if data[:2] != avro.MAGIC:
            return None
        schema: dict[str, Any] = self.schema_of(data).schema
        return schema

    def _reader(self, data: bytes) -> _Reader:
        entry = self.schema_of(data)
        reader = self._readers.get(entry.fingerprint)
        if reader is None or reader.entry is not entry:
            if entry is not self._builtin:
                avro.verify_fingerprint(entry)
            reader = _Reader(
                entry,
                avro.parse_reader(_strip_logical(entry.schema)),
                _Compiler(entry.schema).render(entry.schema, ""),
            )
            self._readers[entry.fingerprint] = reader
        return reader


# -- reading topics -------------------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    """One consumed record: decoded key and value (None for a tombstone), or why it failed."""

    topic: str
    partition: int
    offset: int
    key: Any
    value: Any
    error: str | None = None
    timestamp: int = -1  # the Kafka record's timestamp, Unix ms
    headers: Sequence[tuple[str, bytes]] = ()  # the Kafka record's headers

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "topic": self.topic,
                "partition": self.partition,
                "offset": self.offset,
                "key": self.key,
                "value": self.value,
            },
            default=_json_default,
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _SchemaLoader:
    """The schema topics, read into the decoder's registry: at start, and again on an unknown
    fingerprint. Unreadable schema records are skipped (and counted in `errors`)."""

    def __init__(self, reader: SchemaTopicReader, registry: avro.SchemaRegistry) -> None:
        self.reader = reader
        self.registry = registry
        self.errors: list[str] = []

    def refresh(self) -> int:
        """Read what is new; returns how many schemas were added."""
        added = 0
        for key, value in self.reader.records():
            try:
                if self.registry.load(key, value, verify=False) is not None:  # checked on first use
                    added += 1
            except SchemaError as exc:
                self.errors.append(str(exc))
                log.warning("skipping a record of the schema topic: %s", exc)
        return added


def schema_topics_for(
    topics: Sequence[str], topic_prefix: str | None, existing: set[str], missing_ok: bool = False
) -> list[str]:
    """The schema topics of ``topics``: ``<prefix>.schemas``, the prefix given or guessed from the names.

    With ``missing_ok``, a topic that does not exist yet counts as ``<prefix>.<schema>.<table>``.
    """
    if topic_prefix is not None:
        return [schemas_topic(topic_prefix)]
    found: list[str] = []
    for topic in topics:
        parts = topic.split(".")
        if missing_ok and topic not in existing and len(parts) > 2:
            guess = schemas_topic(".".join(parts[:-2]))
            if guess not in found:
                found.append(guess)
            continue
        # <prefix>.<schema>.<table>, <prefix>.messages, <prefix>.schemas
        for cut in (2, 1):  # both when both exist: reading a schema topic too many is harmless
            candidate = schemas_topic(".".join(parts[:-cut]))
            if len(parts) > cut and candidate in existing and candidate not in found:
                found.append(candidate)
    return found


class ChangeConsumer:
    """Reads cdc topics and yields decoded `Record` objects; a context manager owning its consumers.

    Without ``group`` it assigns every partition of ``topics`` itself (no
    consumer group, nothing committed); with one it subscribes and commits.
    ``client`` is the brokers (``host:port,...``) or a `cdc.kafka.ClientConfig`
    with the security settings; ``consumer_config`` goes to kafka-python's
    KafkaConsumer on top. ``isolation`` ``read_committed`` (the default) shows
    only what committed transactions wrote: every change exactly once from a
    ``--delivery exactly-once`` connector; ``read_uncommitted`` shows aborted
    records too. ``plain_text``: a key or value that is neither JSON nor Avro
    is its text (the outbox router's keys: aggregate ids), not an error.
    Raises `SinkError` when the broker cannot be reached or a topic does not
    exist.
    """

    def __init__(
        self,
        topics: Sequence[str],
        client: ClientConfig | str,
        *,
        topic_prefix: str | None = None,
        from_beginning: bool = False,
        group: str | None = None,
        consumer_config: dict[str, Any] | None = None,
        isolation: str = "read_committed",
        rebalance: Rebalance | None = None,
        whole_topics: bool = False,
        missing_ok: bool = False,
        plain_text: bool = False,
    ) -> None:
        if not topics:
            raise SinkError("no topics to consume: name at least one")
        self.topics = list(topics)
        client = as_client(client)
        self.bootstrap_servers = client.bootstrap_servers
        self.decoder = RecordDecoder()
        self.plain_text = plain_text
        config = {"isolation_level": isolation, **(consumer_config or {})}
        self._schemas: _SchemaLoader | None = None
        self._reader = TopicReader(
            self.topics,
            client,
            group=group,
            from_beginning=from_beginning,
            config=config,
            rebalance=rebalance,
            whole_topics=whole_topics,
            missing_ok=missing_ok,
        )
        try:
            self.schema_topics = schema_topics_for(
                self.topics, topic_prefix, self._reader.existing, missing_ok
            )
            own = ("group_id", "max_poll_interval_ms", "isolation_level")
            schema_config = {k: v for k, v in config.items() if k not in own}
            self._schemas = _SchemaLoader(
                SchemaTopicReader(client, self.schema_topics, **schema_config),
                self.decoder.registry,
            )
            self._schemas.refresh()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._schemas is not None:
            self._schemas.reader.close()
            self._schemas = None
        self._reader.close()

    @property
    def reader(self) -> TopicReader:
        return self._reader

    def decode(self, message: Message) -> Record:
        """One raw record of `reader`'s, decoded (a consumer that polls `reader` itself)."""
        return self._record(message)

    def records(self, max_messages: int | None = None, idle_timeout: float | None = None) -> Iterator[Record]:
        """Decoded records, until ``max_messages`` were read or none came for ``idle_timeout`` seconds."""
        count = 0
        last = time.monotonic()
        while max_messages is None or count < max_messages:
            wait = (
                1.0 if idle_timeout is None else max(0.0, min(1.0, idle_timeout - (time.monotonic() - last)))
            )
            limit = None if max_messages is None else max_messages - count
            messages = self._reader.poll(wait, limit)
            if not messages:
                if idle_timeout is not None and time.monotonic() - last >= idle_timeout:
                    return
                continue
            last = time.monotonic()
            for message in messages:
                yield self._record(message)
                count += 1

    def __iter__(self) -> Iterator[Record]:
        return self.records()

    def _record(self, message: Message) -> Record:
        topic, partition, offset = message.topic, message.partition, message.offset
        errors: list[str] = []
        if topic in self.schema_topics:
            key: Any = None if message.key is None else bytes(message.key).hex()
        else:
            key = self._decode(message.key, "key", errors)
        value = self._decode(message.value, "value", errors)
        error = f"{topic}[{partition}]@{offset}: " + "; ".join(errors) if errors else None
        return Record(topic, partition, offset, key, value, error, message.timestamp, message.headers)

    def _decode(self, data: bytes | None, part: str, errors: list[str]) -> Any:
        if data is None:
            return None
        if data[:1] in (b"{", b"[", b'"'):
            # --format json writes the rendered envelope already: print it as it is
            with contextlib.suppress(orjson.JSONDecodeError):
                return orjson.loads(data)
        if self.plain_text and data[:2] != avro.MAGIC:
            with contextlib.suppress(UnicodeDecodeError):
                return bytes(data).decode()  # another producer's text: the outbox router's keys
        try:
            is_avro = data[:2] == avro.MAGIC
            if is_avro and not self.decoder.knows(data) and self._schemas is not None:
                self._schemas.refresh()
            return self.decoder.decode(data)
        except SchemaError as exc:
            reason = str(exc)
            if "unknown schema fingerprint" in reason:
                where = ", ".join(self.schema_topics) or "no schema topic found; pass --topic-prefix"
                reason = f"{reason} ({where})"
            errors.append(f"cannot decode the {part}: {reason}")
            return None


def export_schemas(client: ClientConfig | str, topic_prefix: str, out_dir: Path) -> list[Path]:
    """Write every schema of ``<prefix>.schemas`` to ``out_dir/<subject>.v<version>.avsc``."""
    client = as_client(client)
    registry = avro.SchemaRegistry()
    errors = 0
    for key, value in read_schema_records(client, schemas_topic(topic_prefix)):
        try:
            registry.load(key, value)
        except SchemaError as exc:
            errors += 1
            log.warning("skipping a record of the schema topic: %s", exc)
    if not len(registry):
        raise SchemaError(
            f"no schemas in {schemas_topic(topic_prefix)} on {client.bootstrap_servers}"
            f"{f' ({errors} unreadable records)' if errors else ''}: check --topic-prefix"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in sorted(registry, key=lambda e: (e.subject, e.version)):
        path = out_dir / f"{entry.subject}.v{entry.version}.avsc"
        path.write_text(json.dumps(entry.schema, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written
