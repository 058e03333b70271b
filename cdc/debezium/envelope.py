"""Debezium's events: topics, Connect schemas of keys and envelopes, and their values.

What Debezium 3.x's PostgreSQL connector writes, as Kafka Connect data: a
table's key (its key columns, struct ``<topic>.Key``) and value (the envelope
``<topic>.Envelope`` version 2: ``before`` / ``after`` of struct
``<topic>.Value``, ``source`` of ``io.debezium.connector.postgresql.Source``,
``transaction`` of ``event.block``, ``op``, ``ts_ms``, ``ts_us``, ``ts_ns``);
logical messages on ``<prefix>.message``; transaction metadata on
``<prefix>.transaction``; heartbeats on ``__debezium-heartbeat.<prefix>``.

`TableShape` holds everything per table version, built once: the schemas and
the converters of each column (`cdc.debezium.types`). Values are built as
Connect values (Python dicts of Connect values); the JSON and Avro serializers
render them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cdc import __version__
from cdc.change import ChangeEvent
from cdc.debezium.types import (
    ColumnField,
    Convert,
    Options,
    column_field,
    connect_schema,
    field_schema,
    json_converter,
)
from cdc.events import SourceInfo, Table, TopicNames, table_topic

CONNECTOR: Final = "postgresql"

SNAPSHOT_ALLOWED: Final = "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"
#: source.snapshot: Debezium's values for cdc's (streamed events are "false")
SNAPSHOT_VALUES: Final = {None: "false", "false": "false", "true": "true", "last": "last"}


def debezium_topics(prefix: str) -> TopicNames:
    """Debezium's topic names: ``<prefix>.<schema>.<table>``, ``<prefix>.message``, ..."""
    return TopicNames(prefix, f"{prefix}.message", f"{prefix}.transaction", f"__debezium-heartbeat.{prefix}")


def _field(kind: str, name: str, optional: bool, **more: Any) -> dict[str, Any]:
    return field_schema(connect_schema(kind, **more), name, optional=optional)


SOURCE_SCHEMA: Final = connect_schema(
    "struct",
    "io.debezium.connector.postgresql.Source",
    version=1,
    fields=[
        _field("string", "version", False),
        _field("string", "connector", False),
        _field("string", "name", False),
        _field("int64", "ts_ms", False),
        field_schema(
            connect_schema(
                "string",
                "io.debezium.data.Enum",
                version=1,
                parameters={"allowed": SNAPSHOT_ALLOWED},
            ),
            "snapshot",
            optional=True,
            default="false",
        ),
        _field("string", "db", False),
        _field("string", "sequence", True),
        _field("int64", "ts_us", True),
        _field("int64", "ts_ns", True),
        _field("string", "schema", False),
        _field("string", "table", False),
        _field("int64", "txId", True),
        _field("int64", "lsn", True),
        _field("int64", "xmin", True),
        _field("string", "origin", True),
        _field("int64", "origin_lsn", True),
    ],
)
BLOCK_SCHEMA: Final = connect_schema(
    "struct",
    "event.block",
    version=1,
    fields=[
        _field("string", "id", False),
        _field("int64", "total_order", False),
        _field("int64", "data_collection_order", False),
    ],
)
MESSAGE_KEY_SCHEMA: Final = {
    **connect_schema("struct", fields=[_field("string", "prefix", True)]),
    "optional": False,
    "name": "io.debezium.connector.postgresql.MessageKey",
    "version": 1,
}
TRANSACTION_KEY_SCHEMA: Final = {
    **connect_schema("struct", fields=[_field("string", "id", False)]),
    "optional": False,
    "name": "io.debezium.connector.common.TransactionMetadataKey",
    "version": 1,
}
TRANSACTION_VALUE_SCHEMA: Final = {
    **connect_schema(
        "struct",
        fields=[
            _field("string", "status", False),
            _field("string", "id", False),
            _field("int64", "event_count", True),
            field_schema(
                connect_schema(
                    "array",
                    items={
                        "type": "struct",
                        "fields": [
                            _field("string", "data_collection", False),
                            _field("int64", "event_count", False),
                        ],
                        "optional": True,
                        "name": "event.collection",
                        "version": 1,
                    },
                ),
                "data_collections",
                optional=True,
            ),
            _field("int64", "ts_ms", False),
        ],
    ),
    "optional": False,
    "name": "io.debezium.connector.common.TransactionMetadataValue",
    "version": 1,
}
HEARTBEAT_KEY_SCHEMA: Final = {
    **connect_schema("struct", fields=[_field("string", "serverName", False)]),
    "optional": False,
    "name": "io.debezium.connector.common.ServerNameKey",
    "version": 1,
}
HEARTBEAT_VALUE_SCHEMA: Final = {
    **connect_schema("struct", fields=[_field("int64", "ts_ms", False)]),
    "optional": False,
    "name": "io.debezium.connector.common.Heartbeat",
    "version": 1,
}


def message_value_schema(options: Options) -> dict[str, Any]:
    """The value of a logical message (its content follows binary.handling.mode)."""
    content = "bytes" if options.binary == "bytes" else "string"
    message = connect_schema(
        "struct",
        "io.debezium.connector.postgresql.Message",
        version=1,
        fields=[_field("string", "prefix", True), _field(content, "content", True)],
    )
    return {
        **connect_schema(
            "struct",
            fields=[
                _field("string", "op", False),
                _field("int64", "ts_ms", True),
                field_schema(SOURCE_SCHEMA, "source", optional=False),
                field_schema(BLOCK_SCHEMA, "transaction", optional=True),
                field_schema(message, "message", optional=False),
            ],
        ),
        "optional": False,
        "name": "io.debezium.connector.postgresql.MessageValue",
        "version": 1,
    }


@dataclass(slots=True)
class TableShape:
    """One table version as Debezium writes it, built once: schemas, names, converters."""

    table: Table
    topic: str
    names: list[str]
    fields: list[ColumnField]
    key_names: list[str]
    key_schema: dict[str, Any] | None
    value_schema: dict[str, Any]
    row_schema: dict[str, Any]  # the Value struct


def table_shape(prefix: str, table: Table, options: Options) -> TableShape:
    topic = table_topic(prefix, table)
    fields = [column_field(c.type, options) for c in table.columns]
    names = [c.name for c in table.columns]
    key_set = set(table.key_indexes)
    columns = [
        field_schema(f.schema, n, optional=i not in key_set)
        for i, (n, f) in enumerate(zip(names, fields, strict=True))
    ]
    row = {"type": "struct", "fields": columns, "optional": True, "name": f"{topic}.Value"}
    key_schema = None
    if table.has_key:
        key_fields = [field_schema(fields[i].schema, names[i], optional=False) for i in table.key_indexes]
        key_schema = {"type": "struct", "fields": key_fields, "optional": False, "name": f"{topic}.Key"}
    value_fields = [
        {**row, "field": "before"},
        {**row, "field": "after"},
        field_schema(SOURCE_SCHEMA, "source", optional=False),
        field_schema(BLOCK_SCHEMA, "transaction", optional=True),
        _field("string", "op", False),
        _field("int64", "ts_ms", True),
        _field("int64", "ts_us", True),
        _field("int64", "ts_ns", True),
    ]
    value_schema = {
        "type": "struct",
        "fields": value_fields,
        "optional": False,
        "name": f"{topic}.Envelope",
        "version": 2,
    }
    return TableShape(
        table, topic, names, fields, [names[i] for i in table.key_indexes], key_schema, value_schema, row
    )


def row_converter(
    shape: TableShape, render: Callable[[Convert | None, dict[str, Any]], Convert | None]
) -> Any:
    """A function making a row dict (names -> values) from wire values, each column converted by
    ``render(to_connect, column schema)`` (None: as it is). Built once per table version."""
    names = shape.names
    steps: list[tuple[int, Convert]] = []
    for i, f in enumerate(shape.fields):
        step = render(f.to_connect, f.schema)
        if step is not None:
            steps.append((i, step))

    def convert(values: list[Any]) -> dict[str, Any]:
        row = dict(zip(names, values, strict=True))
        for i, c in steps:
            value = values[i]
            if value is not None:
                row[names[i]] = c(value)
        return row

    return convert


def json_render(to_connect: Convert | None, schema: dict[str, Any]) -> Convert | None:
    """wire value -> the JsonConverter's JSON of its Connect value, composed once."""
    to_json = json_converter(schema)
    if to_connect is None:
        return to_json
    if to_json is None:
        return to_connect

    def both(value: Any) -> Any:
        connected = to_connect(value)
        return None if connected is None else to_json(connected)

    return both


def source_value(event: ChangeEvent, info: SourceInfo, prefix: str) -> dict[str, Any]:
    """The source block: connector, commit time, snapshot, position (Debezium's ``sequence``)."""
    table = event.table
    commit_us = event.commit_us
    last = event.last_commit_lsn
    return {
        "version": __version__,
        "connector": CONNECTOR,
        "name": prefix,
        "ts_ms": event.commit_ts_ms,
        "snapshot": SNAPSHOT_VALUES.get(event.snapshot, event.snapshot),
        "db": info.db,
        "sequence": sequence(last, event.lsn),
        "ts_us": commit_us,
        "ts_ns": commit_us * 1000,
        "schema": table.schema if table is not None else "",
        "table": table.name if table is not None else "",
        "txId": event.xid or None,
        "lsn": event.lsn,
        "xmin": None,
        "origin": None,
        "origin_lsn": None,
    }


def sequence(last_commit_lsn: int | None, lsn: int) -> str:
    """Debezium's ``source.sequence``: ``["<end LSN of the transaction before>","<lsn>"]``."""
    if last_commit_lsn is None:
        return f'[null,"{lsn}"]'
    return f'["{last_commit_lsn}","{lsn}"]'


def block_value(event: ChangeEvent) -> dict[str, Any] | None:
    if event.transaction_id is None:
        return None
    return {
        "id": event.transaction_id,
        "total_order": event.total_order,
        "data_collection_order": event.data_collection_order,
    }


def side_record(kind: str, prefix: str, key: dict[str, Any], value: dict[str, Any]) -> tuple[Any, ...]:
    """(key schema, key, value schema, value) of a transaction or heartbeat record in Debezium's form."""
    if kind == "transaction":
        return (
            TRANSACTION_KEY_SCHEMA,
            {"id": key["id"]},
            TRANSACTION_VALUE_SCHEMA,
            {
                "status": value["status"],
                "id": value["id"],
                "event_count": value.get("event_count"),
                "data_collections": value.get("data_collections"),
                "ts_ms": value["ts_ms"],
            },
        )
    return HEARTBEAT_KEY_SCHEMA, {"serverName": prefix}, HEARTBEAT_VALUE_SCHEMA, {"ts_ms": value["ts_ms"]}
