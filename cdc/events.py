"""The change event model: what one row change means, independent of its encoding.

A `Table` is one version of a table's shape (a Relation message with its
column types resolved); a new Relation for the same table makes a new
version. A `ChangeEvent` is one change to one row (or a truncate, or a
logical message), positioned by ``(commit_lsn, total_order)``, which is
unique and increasing across the stream so that consumers can drop repeats
of at-least-once delivery.

Values in ``before`` / ``after`` are wire values of `cdc.pgtypes`, aligned
with ``table.columns``. The JSON envelope (`envelope`) is the contract of
DESIGN.md; the Avro encoding in `cdc.avro` has the same shape.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson

from cdc import __version__
from cdc.change import ChangeEvent
from cdc.lsn import PG_EPOCH_US
from cdc.pgoutput import Relation, ReplicaIdentity, TupleData
from cdc.pgtypes import IDENTITY, ColumnType, TypeCatalog, column_type

CONNECTOR: Final = "cdc"
UNAVAILABLE_PLACEHOLDER: Final = "__cdc_unavailable_value"


@dataclass(slots=True, frozen=True)
class TableColumn:
    name: str
    type: ColumnType
    is_key: bool


@dataclass(slots=True)
class Table:
    """One version of a published table.

    The Kafka key is the replica identity (primary key or the identity index).
    With REPLICA IDENTITY FULL the server flags every column as identity, which
    would make the key change on every update, so FULL (and NOTHING) tables
    are keyed by their primary key, given as ``primary_key``, or have no key.
    """

    relation_id: int
    schema: str
    name: str
    replica_identity: int
    columns: list[TableColumn]
    version: int = 1
    primary_key: list[str] | None = None
    key_indexes: list[int] = field(default_factory=list)
    # "schema.table", computed once: the per-event path counts events under it
    qualified_name: str = field(init=False, default="", compare=False)
    # the JSON rendering of a row (`render_row`), made on first use
    row_renderer: Any = field(init=False, default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.qualified_name = f"{self.schema}.{self.name}"
        if self.replica_identity in (ReplicaIdentity.FULL, ReplicaIdentity.NOTHING):
            wanted = self.primary_key or []
            names = [c.name for c in self.columns]
            self.key_indexes = [names.index(n) for n in wanted] if set(wanted) <= set(names) else []
        else:
            self.key_indexes = [i for i, c in enumerate(self.columns) if c.is_key]

    @property
    def has_key(self) -> bool:
        return bool(self.key_indexes)

    def same_shape(self, other: Table) -> bool:
        """Would ``other`` produce the same schema? (Then it is not a new version.)"""
        return (
            self.schema == other.schema
            and self.name == other.name
            and self.replica_identity == other.replica_identity
            and [(c.name, c.type.oid, c.type.typmod, c.is_key) for c in self.columns]
            == [(c.name, c.type.oid, c.type.typmod, c.is_key) for c in other.columns]
            and self.key_indexes == other.key_indexes
        )


def table_from_relation(
    relation: Relation,
    catalog: TypeCatalog | None = None,
    version: int = 1,
    primary_key: list[str] | None = None,
) -> Table:
    # the server sends "" as the namespace of pg_catalog relations
    schema = relation.namespace or "pg_catalog"
    columns = [
        TableColumn(c.name, column_type(c.type_oid, c.type_modifier, catalog), c.is_key)
        for c in relation.columns
    ]
    return Table(
        relation.relation_id, schema, relation.name, relation.replica_identity, columns, version, primary_key
    )


class TableVersions:
    """The one owner of table versions, shared by the stream and the incremental snapshots.

    A table described again (a Relation message, or the catalog for a
    snapshot) keeps its version while its shape is the same, so its Avro
    schema does not change; another shape becomes the next version.
    """

    __slots__ = ("_latest",)

    def __init__(self) -> None:
        self._latest: dict[str, Table] = {}

    def resolve(self, table: Table) -> Table:
        """The current version of ``table``'s shape: the known one when the same, else ``table``
        numbered as the next version."""
        previous = self._latest.get(table.qualified_name)
        if previous is not None and previous.same_shape(table):
            return previous
        table.version = previous.version + 1 if previous is not None else 1
        self._latest[table.qualified_name] = table
        return table


def pg_ts_to_ms(pg_ts: int) -> int:
    """A protocol timestamp (microseconds since 2000-01-01) as Unix milliseconds."""
    return (pg_ts + PG_EPOCH_US) // 1000


def pg_ts_to_us(pg_ts: int) -> int:
    """A protocol timestamp (microseconds since 2000-01-01) as Unix microseconds."""
    return pg_ts + PG_EPOCH_US


def render_row(table: Table, row: list[Any] | None) -> dict[str, Any] | None:
    """A row of wire values as the JSON format renders it (column name -> rendering)."""
    if row is None:
        return None
    render = table.row_renderer
    if render is None:
        render = table.row_renderer = _row_renderer(table)
    result: dict[str, Any] = render(row)
    return result


def _row_renderer(table: Table) -> Any:
    """One function per table version: the values as they are, then the columns whose type renders."""
    names = [c.name for c in table.columns]
    steps = [(i, c.name, c.type.render) for i, c in enumerate(table.columns) if c.type.render is not IDENTITY]

    def render(row: list[Any]) -> dict[str, Any]:
        if len(row) != len(names):
            raise ValueError(f"a row of {len(row)} values for {len(names)} columns")
        rendered = dict(zip(names, row, strict=True))
        for i, name, step in steps:
            value = row[i]
            if value is not None:
                rendered[name] = step(value)
        return rendered

    return render


def render_key(table: Table, key: list[Any]) -> dict[str, Any]:
    return {
        table.columns[i].name: table.columns[i].type.render(v)
        for i, v in zip(table.key_indexes, key, strict=True)
    }


@dataclass(slots=True, frozen=True)
class SourceInfo:
    """The connector-level parts of every event's ``source`` block."""

    name: str  # the connector's name (its --name)
    db: str


def source_block(event: ChangeEvent, info: SourceInfo) -> dict[str, Any]:
    table = event.table
    return {
        "connector": CONNECTOR,
        "version": __version__,
        "name": info.name,
        "db": info.db,
        "schema": table.schema if table else None,
        "table": table.name if table else None,
        "txId": event.xid,
        "lsn": event.lsn,
        "commit_lsn": event.commit_lsn,
        "ts_ms": event.commit_ts_ms,
        "ts_us": event.commit_us,
        "ts_ns": event.commit_us * 1000,
        "snapshot": event.snapshot,
    }


def envelope(event: ChangeEvent, info: SourceInfo, now_ms: int | None = None) -> dict[str, Any]:
    """The event as the JSON-able envelope of DESIGN.md (values rendered per type).

    ``ts_ms`` / ``ts_us`` / ``ts_ns`` (top level) are the processing time, at millisecond
    resolution; those of ``source`` the commit time, at Postgres' microseconds.
    """
    value: dict[str, Any] = {}
    if event.op == "m":
        content = event.message_content or b""
        value["message"] = {"prefix": event.message_prefix, "content": _b64(content)}
    else:
        table = event.table
        assert table is not None
        value["before"] = render_row(table, event.before)
        value["after"] = render_row(table, event.after)
    value["source"] = source_block(event, info)
    value["op"] = event.op
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value["ts_ms"] = ms
    value["ts_us"] = ms * 1000
    value["ts_ns"] = ms * 1_000_000
    value["transaction"] = (
        None
        if event.transaction_id is None
        else {
            "id": event.transaction_id,
            "total_order": event.total_order,
            "data_collection_order": event.data_collection_order,
        }
    )
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- topics and the JSON format ---------------------------------------------------------


_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def table_topic(prefix: str, table: Table) -> str:
    """``<prefix>.<schema>.<table>``; characters Kafka does not allow in names become ``_``."""
    return _TOPIC_UNSAFE.sub("_", f"{prefix}.{table.schema}.{table.name}")[:249]


def messages_topic(prefix: str) -> str:
    return f"{prefix}.messages"


def schemas_topic(prefix: str) -> str:
    return f"{prefix}.schemas"


def transaction_topic(prefix: str) -> str:
    return f"{prefix}.transaction"


def heartbeat_topic(prefix: str) -> str:
    return f"{prefix}.heartbeat"


def offsets_topic(prefix: str) -> str:
    """Where ``--delivery exactly-once`` commits the position its Kafka transactions reach."""
    return f"{prefix}.offsets"


def event_topic(prefix: str, event: ChangeEvent) -> str:
    return messages_topic(prefix) if event.table is None else table_topic(prefix, event.table)


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Where a serializer's records go: tables, logical messages and the side topics."""

    prefix: str
    messages: str
    transaction: str
    heartbeat: str

    @classmethod
    def native(cls, prefix: str) -> TopicNames:
        return cls(prefix, messages_topic(prefix), transaction_topic(prefix), heartbeat_topic(prefix))

    def table(self, table: Table) -> str:
        return table_topic(self.prefix, table)

    def of(self, event: ChangeEvent) -> str:
        return self.messages if event.table is None else table_topic(self.prefix, event.table)


def snapshot_read(table: Table, row: list[Any] | None, lsn: int, ts_ms: int, snapshot: str) -> ChangeEvent:
    """The "r" event of ``row`` read by a snapshot consistent at ``lsn``."""
    # by position to its snapshot: a keyword costs the compiled __init__ (cdc.change) a parse, per row
    return ChangeEvent("r", table, None, row, lsn, lsn, 0, ts_ms, 0, 0, None, snapshot)


def encode_each_read(
    encode: Callable[[ChangeEvent], tuple[bytes | None, bytes]],
    table: Table,
    rows: Sequence[list[Any]],
    lsn: int,
    ts_ms: int,
    snapshot: str,
) -> list[tuple[bytes | None, bytes]]:
    """`Serializer.encode_reads` through ``encode``, one event per row (formats without a faster way)."""
    return [encode(snapshot_read(table, row, lsn, ts_ms, snapshot)) for row in rows]


class Serializer(Protocol):
    """Turns events into Kafka keys and values (JSON here, Avro in `cdc.avro`, Debezium's in
    `cdc.debezium`), and names the topics they go to."""

    topics: TopicNames

    def encode(self, event: ChangeEvent) -> tuple[bytes | None, bytes]: ...

    def encode_key(self, table: Table, key: list[Any]) -> bytes | None: ...

    def encode_reads(
        self, table: Table, rows: Sequence[list[Any]], lsn: int, ts_ms: int, snapshot: str
    ) -> list[tuple[bytes | None, bytes]]:
        """(key, value) of snapshot reads of ``rows`` of ``table`` at ``lsn``: the snapshot's per-row
        path, where only the row differs between events (`encode_each_read` does it one by one)."""
        ...

    def encode_lines(
        self,
        table: Table,
        lines: Sequence[bytes],
        read: Callable[[bytes], list[Any]],
        lsn: int,
        ts_ms: int,
        snapshot: str,
    ) -> list[tuple[bytes | None, bytes]]:
        """`encode_reads` of rows still in COPY text ``lines``; ``read`` turns one into its row.
        A format may read them its own faster way (Avro); the others are `ReadsText`."""
        ...

    def encode_text(
        self, event: ChangeEvent, text: TupleData, parse: Callable[[TupleData], list[Any]]
    ) -> tuple[bytes | None, bytes]:
        """`encode` of a streamed event whose after row is still the server's ``text`` (``after``
        and ``before`` None); ``parse`` turns it into the row. A format may encode it from the
        text (Avro); the others are `ReadsText`."""
        ...

    def encode_fixed(
        self, kind: str, topic: str, key: dict[str, Any], value: dict[str, Any]
    ) -> tuple[bytes, bytes]:
        """A record of a side topic: ``transaction`` (BEGIN/END) or ``heartbeat``."""
        ...

    def take_schema_records(self) -> Sequence[tuple[bytes, bytes]]: ...

    def prepare(self, table: Table) -> None:
        """Register ``table``'s schemas now, before any of its events (their records come out of
        `take_schema_records`): many tables' schemas can then be published in one batch."""
        ...

    def close(self) -> None:
        """Release what the serializer holds (a Schema Registry client)."""
        ...


class ReadsText:
    """`Serializer.encode_lines` and `Serializer.encode_text` as reading the text into rows, then
    the general way: the formats without a faster one (JSON, Debezium's)."""

    def encode_lines(
        self: Serializer,
        table: Table,
        lines: Sequence[bytes],
        read: Callable[[bytes], list[Any]],
        lsn: int,
        ts_ms: int,
        snapshot: str,
    ) -> list[tuple[bytes | None, bytes]]:
        return self.encode_reads(table, [read(line) for line in lines], lsn, ts_ms, snapshot)

    def encode_text(
        self: Serializer, event: ChangeEvent, text: TupleData, parse: Callable[[TupleData], list[Any]]
    ) -> tuple[bytes | None, bytes]:
        event.after = parse(text)
        return self.encode(event)


class JsonSerializer(ReadsText):
    """``--format json``: the envelope as UTF-8 JSON, values rendered per type."""

    def __init__(self, topic_prefix: str, source: SourceInfo) -> None:
        self.topic_prefix = topic_prefix
        self.source = source
        self.topics = TopicNames.native(topic_prefix)

    def encode(self, event: ChangeEvent) -> tuple[bytes | None, bytes]:
        value = orjson.dumps(envelope(event, self.source))
        if event.table is None:
            return orjson.dumps({"prefix": event.message_prefix}), value
        key = event.key_values()
        if key is None or event.op == "t":
            return None, value
        return orjson.dumps(render_key(event.table, key)), value

    def encode_key(self, table: Table, key: list[Any]) -> bytes | None:
        return orjson.dumps(render_key(table, key)) if table.has_key else None

    def encode_reads(
        self, table: Table, rows: Sequence[list[Any]], lsn: int, ts_ms: int, snapshot: str
    ) -> list[tuple[bytes | None, bytes]]:
        return encode_each_read(self.encode, table, rows, lsn, ts_ms, snapshot)

    def encode_fixed(
        self, kind: str, topic: str, key: dict[str, Any], value: dict[str, Any]
    ) -> tuple[bytes, bytes]:
        return orjson.dumps(key), orjson.dumps(value)

    def take_schema_records(self) -> Sequence[tuple[bytes, bytes]]:
        return ()

    def prepare(self, table: Table) -> None:
        pass  # JSON has no schemas

    def close(self) -> None:
        pass
