"""Serializers of ``--compat debezium``: Kafka Connect's JsonConverter, and Avro through a Schema Registry.

Both build a table version's schemas and column converters once
(`cdc.debezium.envelope.TableShape`); per event they convert only the
columns whose Connect value differs from the wire value.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from cdc import __version__
from cdc.avro.confluent import RegistryFraming, SchemaIds
from cdc.avro.encoding import (
    _ENCODE_ERRORS,
    _OPS,
    Clock,
    Encoder,
    _fastavro_encoder,
    _long,
    _row_encoder,
    _string,
)
from cdc.change import ChangeEvent
from cdc.config import Settings
from cdc.debezium.avro import avro_schema
from cdc.debezium.envelope import (
    MESSAGE_KEY_SCHEMA,
    TableShape,
    block_value,
    debezium_topics,
    json_render,
    message_value_schema,
    row_converter,
    sequence,
    side_record,
    source_value,
    table_shape,
)
from cdc.debezium.types import Options, unscaled_bytes, unscaled_of
from cdc.errors import SchemaError
from cdc.events import ReadsText, SourceInfo, Table, encode_each_read


def options_of(settings: Settings) -> Options:
    """The Debezium options that ``settings`` give."""
    return Options(
        decimal=settings.decimal_handling_mode,
        time=settings.time_precision_mode,
        binary=settings.binary_handling_mode,
        interval=settings.interval_handling_mode,
        placeholder=settings.unavailable_placeholder,
    )


_CONTENT: dict[str, Callable[[bytes], Any]] = {
    "bytes": lambda b: b,
    "base64": lambda b: base64.b64encode(b).decode(),
    "base64-url-safe": lambda b: base64.urlsafe_b64encode(b).decode(),
    "hex": lambda b: binascii.hexlify(b).decode(),
}


def _now(now_ms: int | None) -> int:
    return time.time_ns() if now_ms is None else now_ms * 1_000_000


# -- JSON ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _JsonCodec:
    shape: TableShape
    row: Callable[[list[Any]], dict[str, Any]]
    key_row: Callable[[list[Any]], dict[str, Any]] | None
    value_schema: bytes
    key_schema: bytes


class DebeziumJsonSerializer(ReadsText):
    """Events as Debezium writes them through Kafka Connect's JsonConverter.

    ``schemas``: ``schemas.enable`` (each key and value ``{"schema": ..., "payload": ...}``, what
    the JDBC sink needs) or the payload alone. ``transaction_metadata``: the ``transaction`` block
    (Debezium's ``provide.transaction.metadata``).
    """

    def __init__(
        self,
        topic_prefix: str,
        source: SourceInfo,
        options: Options,
        *,
        schemas: bool = True,
        transaction_metadata: bool = False,
    ) -> None:
        self.prefix = topic_prefix
        self.source = source
        self.options = options
        self.schemas = schemas
        self.transaction_metadata = transaction_metadata
        self.topics = debezium_topics(topic_prefix)
        self._codecs: dict[int, _JsonCodec] = {}
        self._content = _CONTENT[options.binary]
        if options.binary == "bytes":
            self._content = lambda b: base64.b64encode(b).decode()
        self._message_schema = orjson.dumps(message_value_schema(options))
        self._message_key_schema = orjson.dumps(MESSAGE_KEY_SCHEMA)

    def _wrap(self, schema: bytes, payload: Any) -> bytes:
        if not self.schemas:
            return orjson.dumps(payload)
        return b'{"schema":' + schema + b',"payload":' + orjson.dumps(payload) + b"}"

    def _codec(self, table: Table) -> _JsonCodec:
        codec = self._codecs.get(table.relation_id)
        if codec is None or codec.shape.table is not table:
            shape = table_shape(self.prefix, table, self.options)
            row = row_converter(shape, json_render)
            key_row = None
            if table.has_key:
                steps = [
                    (shape.names[i], json_render(shape.fields[i].to_connect, shape.fields[i].schema))
                    for i in table.key_indexes
                ]

                def key_row(values: list[Any], steps: Any = steps) -> dict[str, Any]:
                    return {
                        name: value if convert is None or value is None else convert(value)
                        for (name, convert), value in zip(steps, values, strict=True)
                    }

            codec = _JsonCodec(
                shape,
                row,
                key_row,
                orjson.dumps(shape.value_schema),
                orjson.dumps(shape.key_schema) if shape.key_schema else b"null",
            )
            self._codecs[table.relation_id] = codec
        return codec

    def encode(self, event: ChangeEvent, now_ms: int | None = None) -> tuple[bytes | None, bytes]:
        table = event.table
        ns = _now(now_ms)
        source = source_value(event, self.source, self.prefix)
        block = block_value(event) if self.transaction_metadata else None
        if table is None:
            message = {"prefix": event.message_prefix, "content": self._content(event.message_content or b"")}
            payload = {
                "op": "m",
                "ts_ms": ns // 1_000_000,
                "source": source,
                "transaction": block,
                "message": message,
            }
            key = self._wrap(self._message_key_schema, {"prefix": event.message_prefix})
            return key, self._wrap(self._message_schema, payload)
        codec = self._codec(table)
        payload = {
            "before": None if event.before is None else codec.row(event.before),
            "after": None if event.after is None else codec.row(event.after),
            "source": source,
            "transaction": block,
            "op": event.op,
            "ts_ms": ns // 1_000_000,
            "ts_us": ns // 1000,
            "ts_ns": ns,
        }
        value = self._wrap(codec.value_schema, payload)
        if event.op == "t" or codec.key_row is None:
            return None, value
        values = event.key_values()
        if values is None:
            return None, value
        return self._wrap(codec.key_schema, codec.key_row(values)), value

    def encode_key(self, table: Table, key: list[Any]) -> bytes | None:
        codec = self._codec(table)
        if codec.key_row is None:
            return None
        return self._wrap(codec.key_schema, codec.key_row(key))

    def encode_reads(
        self, table: Table, rows: Sequence[list[Any]], lsn: int, ts_ms: int, snapshot: str
    ) -> list[tuple[bytes | None, bytes]]:
        return encode_each_read(self.encode, table, rows, lsn, ts_ms, snapshot)

    def encode_fixed(
        self, kind: str, topic: str, key: dict[str, Any], value: dict[str, Any]
    ) -> tuple[bytes, bytes]:
        key_schema, key_value, value_schema, value_value = side_record(kind, self.prefix, key, value)
        return (
            self._wrap(orjson.dumps(key_schema), key_value),
            self._wrap(orjson.dumps(value_schema), value_value),
        )

    def prepare(self, table: Table) -> None:
        pass  # the schema travels in each record (or not at all)

    def take_schema_records(self) -> Sequence[tuple[bytes, bytes]]:
        return ()

    def close(self) -> None:
        pass


# -- Avro through a registry ---------------------------------------------------------------------


@dataclass(slots=True)
class _AvroCodec:
    shape: TableShape
    row: Callable[[list[Any]], bytes]
    convert: list[tuple[int, Callable[[Any], Any]]]
    key_convert: list[Callable[[Any], Any] | None]  # per key column
    key: Callable[[list[Any]], bytes] | None
    value_header: bytes
    key_header: bytes | None
    head: bytes  # version, connector, name of the source block
    snapshot_string: bytes  # the union index of the string in source.snapshot (its default is not null)
    names: bytes  # schema, table


class DebeziumAvroSerializer(ReadsText):
    """Events as Debezium writes them through the AvroConverter and a Schema Registry.

    Schemas are Debezium's Connect schemas as Avro (`cdc.debezium.avro`), registered under
    ``<topic>-key`` / ``<topic>-value``; records in Confluent's wire format.
    """

    def __init__(
        self,
        topic_prefix: str,
        source: SourceInfo,
        options: Options,
        registry_client: SchemaIds,
        *,
        transaction_metadata: bool = False,
    ) -> None:
        self.prefix = topic_prefix
        self.source = source
        self.options = options
        self.transaction_metadata = transaction_metadata
        self.topics = debezium_topics(topic_prefix)
        self.framing = RegistryFraming(registry_client)
        self.registrations = self.framing.registrations
        self._codecs: dict[int, _AvroCodec] = {}
        self._side: dict[tuple[str, str], tuple[bytes, Encoder, bytes, Encoder]] = {}
        self._content = _CONTENT[options.binary]
        self._clock = Clock()
        self._source_key: tuple[Any, ...] | None = None
        self._source_bytes = (b"", b"")

    def _codec(self, table: Table) -> _AvroCodec:
        codec = self._codecs.get(table.relation_id)
        if codec is not None and codec.shape.table is table:
            return codec
        shape = table_shape(self.prefix, table, self.options)
        value_schema = avro_schema(shape.value_schema)
        value_header = self.framing.register(shape.topic, "value", value_schema)[1]
        key = key_header = None
        if shape.key_schema is not None:
            key_avro = avro_schema(shape.key_schema)
            key_header = self.framing.register(shape.topic, "key", key_avro)[1]
            key = _row_encoder([_standalone(f, False) for f in shape.key_schema["fields"]])
        # each column's type on its own (a named type defined once in the schema, inline here)
        row = _row_encoder([_standalone(f, f["optional"]) for f in shape.row_schema["fields"]])
        convert = []
        for i, f in enumerate(shape.fields):
            step = avro_render(f.to_connect, f.schema)
            if step is not None:
                convert.append((i, step))
        steps = dict(convert)
        key_convert = [steps.get(i) for i in table.key_indexes]
        source_fields = value_schema["fields"][2]["type"]["fields"]
        snapshot_type = next(f["type"] for f in source_fields if f["name"] == "snapshot")
        null_at = snapshot_type.index("null")
        codec = _AvroCodec(
            shape,
            row,
            convert,
            key_convert,
            key,
            value_header,
            key_header,
            _string(__version__) + _string("postgresql") + _string(self.prefix),
            _long(1 - null_at),
            _string(table.schema) + _string(table.name),
        )
        self._codecs[table.relation_id] = codec
        return codec

    def _row(self, codec: _AvroCodec, values: list[Any]) -> bytes:
        if codec.convert:
            values = list(values)
            for i, convert in codec.convert:
                value = values[i]
                if value is not None:
                    values[i] = convert(value)
        return codec.row(values)

    def encode(self, event: ChangeEvent, now_ms: int | None = None) -> tuple[bytes | None, bytes]:
        table = event.table
        if table is None:
            return self._encode_message(event, now_ms)
        codec = self._codec(table)
        try:
            before = b"\x00" if event.before is None else b"\x02" + self._row(codec, event.before)
            after = b"\x00" if event.after is None else b"\x02" + self._row(codec, event.after)
        except _ENCODE_ERRORS as exc:
            raise SchemaError(
                f"cannot encode a row of {table.qualified_name} in Debezium's Avro: {exc}"
            ) from None
        head, middle = self._source_parts(codec, event)
        op = _OPS.get(event.op) or _string(event.op)
        value = b"".join(
            (
                codec.value_header,
                before,
                after,
                head,
                _string(sequence(event.last_commit_lsn, event.lsn)),
                middle,
                _long(event.lsn),
                b"\x00\x00\x00",  # xmin, origin, origin_lsn: null
                self._block(event),
                op,
                b"\x02",
                self._clock.encode(_now(now_ms)),  # ts_ms; then ts_us, ts_ns, each with its union index
            )
        )
        if event.op == "t" or codec.key is None:
            return None, value
        values = event.key_values()
        return (None if values is None else self._key(codec, values)), value

    def _source_parts(self, codec: _AvroCodec, event: ChangeEvent) -> tuple[bytes, bytes]:
        """The source block around the per-event sequence and lsn: (version .. sequence's union index,
        ts_us .. lsn's union index), the same for every event of a transaction and table."""
        key = (event.xid, event.commit_ts_ms, event.commit_ts_us, event.snapshot, codec.names)
        if key != self._source_key:
            snapshot = event.snapshot or "false"
            commit_us = event.commit_us
            head = b"".join(
                (
                    codec.head,
                    _long(event.commit_ts_ms),
                    codec.snapshot_string + _string(snapshot),
                    _string(self.source.db),
                    b"\x02",
                )
            )
            middle = b"".join(
                (
                    b"\x02" + _long(commit_us),
                    b"\x02" + _long(commit_us * 1000),
                    codec.names,
                    b"\x00" if not event.xid else b"\x02" + _long(event.xid),
                    b"\x02",
                )
            )
            self._source_key, self._source_bytes = key, (head, middle)
        return self._source_bytes

    def _block(self, event: ChangeEvent) -> bytes:
        if not self.transaction_metadata or event.transaction_id is None:
            return b"\x00"
        return (
            b"\x02"
            + _string(event.transaction_id)
            + _long(event.total_order)
            + _long(event.data_collection_order)
        )

    def _key(self, codec: _AvroCodec, key: list[Any]) -> bytes | None:
        if codec.key is None or codec.key_header is None:
            return None
        converted = [
            v if v is None or c is None else c(v) for c, v in zip(codec.key_convert, key, strict=True)
        ]
        return codec.key_header + codec.key(converted)

    def encode_key(self, table: Table, key: list[Any]) -> bytes | None:
        return self._key(self._codec(table), key)

    def encode_reads(
        self, table: Table, rows: Sequence[list[Any]], lsn: int, ts_ms: int, snapshot: str
    ) -> list[tuple[bytes | None, bytes]]:
        return encode_each_read(self.encode, table, rows, lsn, ts_ms, snapshot)

    def _fixed(
        self, kind: str, topic: str, key_schema: Any, value_schema: Any
    ) -> tuple[bytes, Encoder, bytes, Encoder]:
        codec = self._side.get((kind, topic))
        if codec is None:
            key_avro, value_avro = avro_schema(key_schema), avro_schema(value_schema)
            key_header = self.framing.register(topic, "key", key_avro)[1]
            value_header = self.framing.register(topic, "value", value_avro)[1]
            codec = (key_header, _fastavro_encoder(key_avro), value_header, _fastavro_encoder(value_avro))
            self._side[(kind, topic)] = codec
        return codec

    def _encode_message(self, event: ChangeEvent, now_ms: int | None) -> tuple[bytes, bytes]:
        codec = self._fixed(
            "message", self.topics.messages, MESSAGE_KEY_SCHEMA, message_value_schema(self.options)
        )
        key_header, encode_key, value_header, encode_value = codec
        source = source_value(event, self.source, self.prefix)
        value = {
            "op": "m",
            "ts_ms": _now(now_ms) // 1_000_000,
            "source": source,
            "transaction": block_value(event) if self.transaction_metadata else None,
            "message": {
                "prefix": event.message_prefix,
                "content": self._content(event.message_content or b""),
            },
        }
        return key_header + encode_key({"prefix": event.message_prefix}), value_header + encode_value(value)

    def encode_fixed(
        self, kind: str, topic: str, key: dict[str, Any], value: dict[str, Any]
    ) -> tuple[bytes, bytes]:
        key_schema, key_value, value_schema, value_value = side_record(kind, self.prefix, key, value)
        key_header, encode_key, value_header, encode_value = self._fixed(
            kind, topic, key_schema, value_schema
        )
        return key_header + encode_key(key_value), value_header + encode_value(value_value)

    def prepare(self, table: Table) -> None:
        """Register ``table``'s subjects now (see `cdc.events.Serializer.prepare`)."""
        self._codec(table)

    def take_schema_records(self) -> Sequence[tuple[bytes, bytes]]:
        return ()  # the registry holds the schemas

    def close(self) -> None:
        self.framing.client.close()


def _standalone(field: dict[str, Any], optional: bool) -> Any:
    """A struct field's Avro type on its own (named types inline) for its encoder, without logical
    types: decimals arrive encoded already (`avro_render`), the rest are the plain types' values."""
    return _plain(avro_schema({**field, "optional": optional}))


def _plain(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


def _decimal_bytes(value: Decimal) -> bytes:
    """A Connect Decimal as the AvroConverter writes it: Java's BigInteger.toByteArray of the unscaled."""
    return unscaled_bytes(unscaled_of(value)[0])


def _avro_datum(schema: dict[str, Any]) -> Callable[[Any], Any] | None:
    """Connect value -> what the Avro encoder takes (decimals as their bytes); None: the same."""
    if schema.get("name") == "org.apache.kafka.connect.data.Decimal":
        return _decimal_bytes
    if schema["type"] == "array":
        item = _avro_datum(schema["items"])
        return None if item is None else (lambda values: [None if v is None else item(v) for v in values])
    return None


def avro_render(
    to_connect: Callable[[Any], Any] | None, schema: dict[str, Any]
) -> Callable[[Any], Any] | None:
    """wire value -> the datum of its Connect value for the Avro encoder, composed once."""
    datum = _avro_datum(schema)
    if to_connect is None or datum is None:
        return to_connect or datum

    def both(value: Any) -> Any:
        connected = to_connect(value)
        return None if connected is None else datum(connected)

    return both
