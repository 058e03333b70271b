"""`AvroSerializer`: change events -> Avro single-object encoded keys and values, plus schema records."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cdc import __version__
from cdc.avro.compat import Registration, _describe, check_backward, column_problems
from cdc.avro.confluent import RegistryFraming, SchemaIds
from cdc.avro.encoding import (
    _ENCODE_ERRORS,
    _OPS,
    Encoder,
    LinesEncoder,
    ReadsEncoder,
    TextEncoder,
    _bytes,
    _fastavro_encoder,
    _lines_encoder,
    _long,
    _nullable_string,
    _reads_encoder,
    _row_encoder,
    _string,
    _text_encoder,
    column_encoder,
)
from cdc.avro.registry import RegisteredSchema, SchemaRegistry, encode_schema_record
from cdc.avro.schemas import (
    MAGIC,
    SIDE_SCHEMAS,
    canonical_form,
    fingerprint,
    fixed_schema,
    key_schema,
    message_schema,
    value_schema,
)
from cdc.change import ChangeEvent
from cdc.errors import SchemaError
from cdc.events import (
    CONNECTOR,
    SourceInfo,
    Table,
    TopicNames,
    event_topic,
    messages_topic,
    schemas_topic,
    snapshot_read,
    table_topic,
)
from cdc.pgoutput import TupleData
from cdc.pgtypes import text_form

log = logging.getLogger(__name__)


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
    key_types: list[Any] | None
    reads: ReadsEncoder | None = None  # a batch of snapshot rows (`encode_reads`), made when first used
    lines: LinesEncoder | None = None  # the same from COPY text lines (`encode_lines`)
    text: TextEncoder | None = None  # a streamed row from its pgoutput text (`encode_text`)
    text_head: bytes = b""  # its value's bytes before the row: the header, no before row, an after row


class AvroSerializer:
    """Change events -> (key, value) in Avro single-object encoding, plus the schema records.

    Call `encode` (or `encode_key`), then `take_schema_records` and produce
    those to `schema_topic` and wait for their acknowledgement before
    producing the data record. With a Schema Registry (``registry_client``) the
    records are in Confluent's wire format instead and their schemas are
    registered there (`cdc.avro.confluent`): the same bodies, another header,
    no schema records. Schemas are built once per table version;
    values are the wire values of `cdc.pgtypes`. Raises `SchemaError` when a
    value does not fit its column's Avro type.
    """

    def __init__(
        self, topic_prefix: str, source: SourceInfo, registry_client: SchemaIds | None = None
    ) -> None:
        self.topic_prefix = topic_prefix
        self.source = source
        self.topics = TopicNames.native(topic_prefix)
        self.schema_topic = schemas_topic(topic_prefix)
        self.registry = SchemaRegistry()
        # with a Schema Registry: its wire format, no schema topic
        self.framing = None if registry_client is None else RegistryFraming(registry_client)
        self.registrations: list[Registration] = [] if self.framing is None else self.framing.registrations
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

    def encode_text(
        self,
        event: ChangeEvent,
        text: TupleData,
        parse: Callable[[TupleData], list[Any]],
        now_ms: int | None = None,
    ) -> tuple[bytes | None, bytes]:
        """`encode` of an event whose after row is still the server's ``text`` (``event.after`` is
        None, and so is its before row), encoded from it in one generated call (`_text_encoder`):
        no row of values, no Decimal, no decoding of ASCII text. Anything it cannot encode goes
        the general way, ``parse`` and then `encode`, which raises the error naming the column."""
        table = event.table
        assert table is not None
        codec = self._codecs.get(table.relation_id)
        if codec is None or codec.table is not table:
            codec = self._codec(table)
        encode = codec.text
        if encode is None:
            if not table.columns:
                event.after = parse(text)
                return self.encode(event, now_ms)
            types = [f["type"] for f in codec.value_fields]
            parsers = [column.type.parse for column in table.columns]
            forms = [text_form(column.type) for column in table.columns]
            encode = codec.text = _text_encoder(types, codec.key_types, table.key_indexes, parsers, forms)
            codec.text_head = codec.value_header + b"\x00\x02"
        try:
            return encode(
                text, codec.key_header or b"", codec.text_head, codec.source_head, self._tail(event, now_ms)
            )
        except Exception:  # the general path raises what it was, naming the column
            event.after = parse(text)
            return self.encode(event, now_ms)

    def encode_key(self, table: Table, key: list[Any]) -> bytes | None:
        """The key alone (for tombstones); None when ``table`` has no key."""
        codec = self._codecs.get(table.relation_id)
        if codec is None or codec.table is not table:
            codec = self._codec(table)
        return self._encode_key(codec, key)

    def encode_reads(
        self,
        table: Table,
        rows: Sequence[list[Any]],
        lsn: int,
        ts_ms: int,
        snapshot: str,
        now_ms: int | None = None,
    ) -> list[tuple[bytes | None, bytes]]:
        """Snapshot reads: all but the row is the same in their values, so it is encoded once for
        ``rows`` (an event and its envelope per row cost a snapshot worker 3 us of its 12 a row)."""
        codec, first, head, tail = self._reads_frame(table, lsn, ts_ms, snapshot, now_ms)
        reads = codec.reads
        if reads is None:
            types = [f["type"] for f in codec.value_fields]
            reads = codec.reads = _reads_encoder(types, codec.key_types, table.key_indexes)
        out: list[tuple[bytes | None, bytes]] = []
        try:
            reads(rows, head, tail, codec.key_header or b"", out)
        except _ENCODE_ERRORS:
            self.encode(replace(first, after=rows[len(out)]), now_ms)  # raises the error naming the column
            raise
        return out

    def encode_lines(
        self,
        table: Table,
        lines: Sequence[bytes],
        read: Callable[[bytes], list[Any]],
        lsn: int,
        ts_ms: int,
        snapshot: str,
        now_ms: int | None = None,
    ) -> list[tuple[bytes | None, bytes]]:
        """`encode_reads` of the rows of COPY text ``lines``, read in the same generated loop that
        encodes them (`_lines_encoder`); ``read`` is the row reader for lines with escapes or NULLs.
        A batch where anything fails is read and encoded again the general way, which raises the
        error naming the column."""
        if not table.columns:
            return self.encode_reads(table, [read(line) for line in lines], lsn, ts_ms, snapshot, now_ms)
        codec, _, head, tail = self._reads_frame(table, lsn, ts_ms, snapshot, now_ms)
        encode = codec.lines
        if encode is None:
            types = [f["type"] for f in codec.value_fields]
            parsers = [column.type.parse for column in table.columns]
            forms = [text_form(column.type) for column in table.columns]
            encode = codec.lines = _lines_encoder(types, codec.key_types, table.key_indexes, parsers, forms)
        out: list[tuple[bytes | None, bytes]] = []
        try:
            encode(lines, read, head, tail, codec.key_header or b"", out)
        except Exception:  # the general path raises what it was, naming the column
            return self.encode_reads(table, [read(line) for line in lines], lsn, ts_ms, snapshot, now_ms)
        return out

    def _reads_frame(
        self, table: Table, lsn: int, ts_ms: int, snapshot: str, now_ms: int | None
    ) -> tuple[_TableCodec, ChangeEvent, bytes, bytes]:
        """What every read of ``table`` in a batch shares: the codec, the event without its row, and
        the value's bytes before and after the row."""
        codec = self._codecs.get(table.relation_id)
        if codec is None or codec.table is not table:
            codec = self._codec(table)
        first = snapshot_read(table, None, lsn, ts_ms, snapshot)
        head = codec.value_header + b"\x00\x02"  # no before, an after
        tail = b"".join((codec.source_head, *self._tail(first, now_ms)))
        return codec, first, head, tail

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

    def prepare(self, table: Table) -> None:
        """Register ``table``'s key and value schemas now (see `cdc.events.Serializer.prepare`)."""
        codec = self._codecs.get(table.relation_id)
        if codec is None or codec.table is not table:
            self._codec(table)

    def take_schema_records(self) -> Sequence[tuple[bytes, bytes]]:
        """(key, value) records for the schema topic registered since the last call."""
        if not self._pending:
            return ()  # the per-event case: no allocation
        records, self._pending = self._pending, []
        return records

    def close(self) -> None:
        """Close the Schema Registry client, if any."""
        if self.framing is not None:
            self.framing.client.close()

    # -- also useful

    def fork(self) -> AvroSerializer:
        """A serializer for another thread that starts from this one's schemas and table codecs
        (immutable): a snapshot worker thread neither reads the schema topic nor builds a schema
        again. Only without a Schema Registry, whose client is not shared."""
        if self.framing is not None:
            raise ValueError("a serializer writing through a Schema Registry cannot be forked")
        other = AvroSerializer(self.topic_prefix, self.source)
        other.registry = self.registry.copy()
        other._codecs = dict(self._codecs)  # one C-level copy: atomic under the GIL
        return other

    def topic_for(self, event: ChangeEvent) -> str:
        return event_topic(self.topic_prefix, event)

    def load_schema_records(self, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
        """Start from what the schema topic already holds (after a restart), so versions continue."""
        for key, value in records:
            self.registry.load(key, value, verify=False)  # its own records; a clash is found on use

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
        """The parts after the source head: txId, lsn, commit_lsn, ts_ms, ts_us, ts_ns, snapshot, op,
        ts_ms, ts_us, ts_ns, transaction."""
        txn_key = (
            event.xid,
            event.commit_lsn,
            event.commit_ts_ms,
            event.commit_ts_us,
            event.snapshot,
            event.transaction_id,
        )
        if txn_key != self._txn_key:
            self._txn_key = txn_key
            commit_us = event.commit_us
            self._txn_parts = (
                _long(event.xid),
                _long(event.commit_lsn)
                + _long(event.commit_ts_ms)
                + b"\x02"
                + _long(commit_us)
                + b"\x02"
                + _long(commit_us * 1000)
                + _nullable_string(event.snapshot),
                b"\x00" if event.transaction_id is None else b"\x02" + _string(event.transaction_id),
            )
        txid, source_tail, txn_head = self._txn_parts
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        if now_ms != self._now_ms:
            # ts_ms, ts_us, ts_ns: the processing time at millisecond resolution, encoded once per ms
            self._now_ms = now_ms
            self._now_bytes = (
                _long(now_ms) + b"\x02" + _long(now_ms * 1000) + b"\x02" + _long(now_ms * 1_000_000)
            )
        now = self._now_bytes
        op = _OPS.get(event.op)
        if op is None:
            raise SchemaError(f"unknown op {event.op!r}: expected one of {', '.join(_OPS)}")
        lsn = _long(event.lsn)
        if event.transaction_id is None:
            return txid, lsn, source_tail, op, now, txn_head
        order = _long(event.total_order) + _long(event.data_collection_order)
        return txid, lsn, source_tail, op, now, txn_head, order

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
        key_header = key = key_types = None
        if table.has_key:
            entry, key_header = self._register(topic, "key", lambda v: key_schema(table, topic, v) or {})
            key_types = [f["type"] for f in entry.schema["fields"]]
            key = _row_encoder(key_types)
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
            key_types=key_types,
        )
        self._codecs[table.relation_id] = codec
        return codec

    def _register(
        self, topic: str, kind: str, build: Callable[[int], dict[str, Any]]
    ) -> tuple[RegisteredSchema, bytes]:
        """Find or register the schema ``build(variant)`` for ``topic``; (entry, record header)."""
        if self.framing is not None:
            return self.framing.register(topic, kind, build(0))
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
    if previous is None:  # a first version: debug (10,000 tables made 20,000 lines at start)
        log.debug("schema %s v%d registered (%s)", entry.subject, entry.version, entry.fingerprint.hex())
        return Registration(entry, None)
    problems = column_problems(check_backward(entry.schema, previous.schema), entry.kind)
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
