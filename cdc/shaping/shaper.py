"""The shaping stage of the writer: masks, then transforms, then encoding, and the dead letters.

`cdc.writer.RecordWriter` hands every event to `Shaper.records` when shaping
is configured (``--mask-columns``, ``--transform``, ``--outbox-table``,
``--outbox-messages`` or ``--on-record-error dead-letter``): what comes back
are the Kafka records to write for it (none when a transform dropped it,
several when it split it, a dead letter when it could not be written).
Without shaping the writer's plain path runs, as before: nothing here is on
it.

Masks and transforms that change columns give the event another `Table`
(see `derive`): the same topic and subject, a schema of its own, so the
Avro schema follows them (masked columns are text, declared columns have
their declared types). The same events come out of the stream, the snapshot
workers and incremental snapshots, which all write through a `RecordWriter`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from cdc.change import ChangeEvent
from cdc.config import Settings
from cdc.errors import ConfigError, SchemaError, TransformError
from cdc.events import Serializer, SourceInfo, Table, TableColumn, envelope, render_key
from cdc.lsn import format_lsn
from cdc.pgtypes import column_type
from cdc.shaping import deadletter
from cdc.shaping.outbox import OutboxRouter
from cdc.shaping.select import Rules
from cdc.shaping.transform import ColumnChanges, Event, Loaded, Record, load, resolve_type

log = logging.getLogger(__name__)

_TEXT: Final = column_type(25)
_OPS: Final = frozenset("cudrtm")
#: Synthetic relation ids of derived tables: above any OID, so that each has its own Avro codec.
_variants = itertools.count(1)


@dataclass(slots=True)
class Outgoing:
    """One Kafka record to write for an event."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    dead: bool = False  # a dead letter: not checked against the size limit again


def _make_rebuild() -> Callable[[ChangeEvent, str, Table | None, Any, Any], ChangeEvent]:
    """``rebuild(change, op, table, before, after)``: a copy of ``change`` with those four replaced.

    Generated from the dataclass's fields, as `dataclasses` generates ``__init__``: every field is
    copied (so one added to `ChangeEvent` later is too), at a fraction of `dataclasses.replace`'s
    cost, which looks the fields up on every call (measured: a third of a masked event's cost).
    The arguments go by position, in the fields' order, which is `ChangeEvent.__init__`'s: compiled,
    its native ``__init__`` takes 16 by keyword at 1.44 us, by position at 0.18.
    """
    given = ("op", "table", "before", "after")
    names = [f.name for f in dataclasses.fields(ChangeEvent)]
    arguments = ", ".join(name if name in given else f"change.{name}" for name in names)
    namespace: dict[str, Any] = {"ChangeEvent": ChangeEvent}
    exec(  # noqa: S102 - the text is made here, from the dataclass's own field names
        f"def rebuild(change, op, table, before, after):\n    return ChangeEvent({arguments})\n",
        namespace,
    )
    rebuild: Callable[[ChangeEvent, str, Table | None, Any, Any], ChangeEvent] = namespace["rebuild"]
    return rebuild


_rebuild = _make_rebuild()


def derive(base: Table, columns: list[TableColumn], key: list[str] | None = None) -> Table:
    """A table like ``base`` with other columns (or another key) and a relation id of its own.

    The topic and the schema subject stay the table's; the schema is the derived one. ``key``
    names the key columns (default: ``base``'s, or no key when one of them is gone).
    """
    table = Table(
        base.relation_id + (next(_variants) << 32),
        base.schema,
        base.name,
        base.replica_identity,
        columns,
        base.version,
    )
    names = [c.name for c in columns]
    wanted = key if key is not None else [base.columns[i].name for i in base.key_indexes]
    table.key_indexes = [names.index(n) for n in wanted] if wanted and set(wanted) <= set(names) else []
    return table


class _Shape:
    """One table version as the shaper treats it, built once."""

    __slots__ = ("base", "index", "key_names", "keyed", "mask", "masked", "names", "output", "output_names")

    def __init__(self, base: Table, masked: Table, mask: Callable[[list[Any]], list[Any]] | None) -> None:
        self.base = base
        self.masked = masked  # what transforms see (base when nothing is masked)
        self.mask = mask
        self.names = [c.name for c in masked.columns]
        self.key_names = [self.names[i] for i in masked.key_indexes]
        self.output = masked  # what they write, after declared column changes
        self.output_names = self.names
        self.index: frozenset[str] = frozenset(self.names)
        self.keyed: dict[tuple[str, ...], Table] = {}


class _Failed(Exception):
    """A transform failed on an event (raised, or returned what cannot be written)."""

    def __init__(self, transform: str, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.transform = transform
        self.error = error


class Masker:
    """``--mask-columns``: each value becomes a keyed hash (HMAC-SHA256 of its text, with the secret of
    ``--mask-salt-file``: equal values stay equal, for joins) or the fixed ``--mask-text``."""

    def __init__(self, settings: Settings) -> None:
        self.salt: bytes | None = None
        if settings.mask_salt_file:
            path = Path(settings.mask_salt_file).expanduser()
            try:
                self.salt = path.read_bytes().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read --mask-salt-file {path}: {exc.strerror or exc}") from None
            if len(self.salt) < 16:
                raise ConfigError(f"--mask-salt-file {path} holds {len(self.salt)} bytes: use at least 16")
        self.text = settings.mask_text
        self.placeholder = settings.unavailable_placeholder
        self.placeholders = (settings.unavailable_placeholder, settings.unavailable_placeholder.encode())

    def column(self, column: TableColumn) -> Callable[[Any], Any]:
        """The mask of one column's wire values (None stays None, an unsent TOAST value its placeholder)."""
        render, salt, fixed = column.type.render, self.salt, self.text
        placeholders, placeholder = self.placeholders, self.placeholder
        keyed = None if salt is None else hmac.new(salt, digestmod=hashlib.sha256)  # copied per value

        def mask(value: Any) -> Any:
            if value is None:
                return None
            if value.__class__ in (str, bytes) and value in placeholders:
                return placeholder
            if value.__class__ is list and len(value) == 1 and value[0] == placeholder:
                return placeholder  # an array's placeholder: [placeholder]
            if keyed is None:
                return fixed
            rendered = render(value)
            text = rendered if isinstance(rendered, str) else orjson.dumps(rendered).decode()
            digest = keyed.copy()  # the key's inner and outer pads computed once, not per value
            digest.update(text.encode())
            return digest.hexdigest()

        return mask


class Shaper:
    """Masks, transforms and encodes events into the records to write; see the module docstring.

    ``counts`` (the connector hands in its `Status.shaping`): ``filtered`` events transforms dropped,
    ``transform_errors:<transform>``, ``dead_letters:<stage>``.
    """

    def __init__(self, settings: Settings, serializer: Serializer, source: SourceInfo) -> None:
        self.settings = settings
        self.serializer = serializer
        self.source = source
        self.rules = Rules.from_settings(settings)
        self.masker = Masker(settings) if self.rules.masks else None
        self.outbox = OutboxRouter.from_settings(settings)
        self.transforms: list[Loaded] = [load(spec) for spec in settings.transforms]
        #: with the router alone, the events it does not take skip the transform path
        self.outbox_takes = self.outbox.takes if self.outbox is not None and not self.transforms else None
        if self.outbox is not None:  # the built-in transform runs first: records pass the others
            self.transforms.insert(0, Loaded("outbox", self.outbox, None))
        self.columns = _combined([t.columns for t in self.transforms])
        self.on_transform_error = settings.on_transform_error
        self.on_record_error = settings.on_record_error
        self.tombstones = settings.tombstones
        # Debezium's form: a delete of a keyless row is followed by a tombstone too (null key)
        self.keyless_tombstones = settings.compat == "debezium"
        self.dead_letter_topic = deadletter.topic(settings.topic_prefix)
        self.counts: Counter[str] = Counter()
        self._shapes: dict[int, _Shape] = {}
        self._logged: dict[str, tuple[float, int]] = {}  # per cause: last log line, events since

    @staticmethod
    def wanted(settings: Settings) -> bool:
        """Is there anything to shape? (Otherwise the writer's plain path runs.)"""
        return bool(
            settings.mask_columns
            or settings.transforms
            or settings.on_record_error == "dead-letter"
            or settings.outbox_table
            or settings.outbox_messages
        )

    # -- the one entry point ------------------------------------------------------------

    def records(self, change: ChangeEvent, topic: str) -> list[Outgoing]:
        """The records to write for ``change`` (default topic ``topic``), in order.

        Raises `TransformError` (``--on-transform-error fail``) or `SchemaError` (``--on-record-error
        fail``); under the other policies a failure becomes a dead letter or nothing.
        """
        table = change.table
        shape = None
        if table is not None:
            shape = self._shapes.get(table.relation_id)
            if shape is None or shape.base is not table:
                shape = self._shape(table)
            if shape.mask is not None:
                change = self._masked(change, shape)
        if not self.transforms or (self.outbox_takes is not None and not self.outbox_takes(change)):
            return self._encoded(change, topic, change)
        key = None
        if shape is not None and shape.key_names and change.op != "t":
            key = change.key_values()
        try:
            event = self._event(change, topic, shape, key)
            results = self._transformed(event)
            if (
                len(results) == 1
                and results[0] is event
                and self._unchanged(event, change, topic, shape, key)
            ):
                return self._encoded(change, topic, change)  # the common case: nothing to build again
            out: list[Outgoing] = []
            for item in results:
                if isinstance(item, Record):
                    out.append(_raw(item))
                else:
                    written, key = self._change_of(item, change, shape)
                    out += self._encoded(written, item.topic, change, item, key)
        except _Failed as failure:
            return self._transform_failed(failure, change, topic)
        if not results:
            self.counts["filtered"] += 1
        return out

    def output_table(self, table: Table) -> Table:
        """The table ``table``'s events are written as (masked columns text, declared columns added or
        dropped): its schema is the one to publish ahead of a snapshot."""
        shape = self._shapes.get(table.relation_id)
        if shape is None or shape.base is not table:
            shape = self._shape(table)
        return shape.output

    # -- masks --------------------------------------------------------------------------

    def _shape(self, table: Table) -> _Shape:
        rules = self.rules.for_table(table.qualified_name)
        masked_names = set(rules.masked)
        mask = None
        masked = table
        if self.masker is not None and masked_names & {c.name for c in table.columns}:
            key_names = {table.columns[i].name for i in table.key_indexes}
            if masked_names & key_names and self.masker.salt is None:
                raise ConfigError(
                    f"--mask-columns masks key column {sorted(masked_names & key_names)[0]} of "
                    f"{table.qualified_name} with a fixed text, so every key would be the same: give "
                    "--mask-salt-file (a keyed hash keeps keys apart), or mask another column"
                )
            columns = [
                TableColumn(c.name, _TEXT, c.is_key) if c.name in masked_names else c for c in table.columns
            ]
            masked = derive(table, columns)
            functions = [
                (i, self.masker.column(c)) for i, c in enumerate(table.columns) if c.name in masked_names
            ]

            def mask(row: list[Any]) -> list[Any]:
                row = list(row)
                for i, function in functions:
                    row[i] = function(row[i])
                return row

        shape = _Shape(table, masked, mask)
        if self.columns is not None:
            shape.output = self._declared(masked, self.columns)
            shape.output_names = [c.name for c in shape.output.columns]
            shape.index = frozenset(shape.output_names)
        self._shapes[table.relation_id] = shape
        return shape

    @staticmethod
    def _masked(change: ChangeEvent, shape: _Shape) -> ChangeEvent:
        mask = shape.mask
        assert mask is not None
        return _rebuild(
            change,
            change.op,
            shape.masked,
            None if change.before is None else mask(change.before),
            None if change.after is None else mask(change.after),
        )

    @staticmethod
    def _declared(table: Table, changes: ColumnChanges) -> Table:
        """``table`` with the columns the transforms declared: dropped, retyped or added (at the end)."""
        columns = [c for c in table.columns if c.name not in changes.drop]
        names = [c.name for c in columns]
        for name, type_name in changes.add.items():
            column_type_ = resolve_type(type_name)
            if name in names:
                old = columns[names.index(name)]
                columns[names.index(name)] = TableColumn(name, column_type_, old.is_key)
            else:
                columns.append(TableColumn(name, column_type_, False))
                names.append(name)
        return derive(table, columns)

    # -- transforms ---------------------------------------------------------------------

    @staticmethod
    def _event(change: ChangeEvent, topic: str, shape: _Shape | None, key: list[Any] | None) -> Event:
        """What the transforms see of ``change``: its rows (and key) as dicts by column name."""
        event = Event(change.table.qualified_name if change.table else None, change.op, topic=topic)
        if shape is not None:  # rows have as many values as the table has columns (the decoder checks)
            names = shape.names
            if change.before is not None:
                event.before = dict(zip(names, change.before))  # noqa: B905
            if change.after is not None:
                event.after = dict(zip(names, change.after))  # noqa: B905
            if key is not None:
                event.key = dict(zip(shape.key_names, key))  # noqa: B905
        event._change = change
        return event

    @staticmethod
    def _unchanged(
        event: Event, change: ChangeEvent, topic: str, shape: _Shape | None, key: list[Any] | None
    ) -> bool:
        """Did the transforms hand ``event`` back as it came (its rows, key, op, topic; no headers)?"""
        if shape is None or shape.output is not shape.masked:
            return False
        if event.op != change.op or event.topic != topic or event.headers:
            return False
        names = shape.names
        after, before = event.after, event.before
        if after is None:
            if change.after is not None:
                return False
        elif change.after is None or [*after.values()] != change.after or [*after] != names:
            return False
        if before is None:
            if change.before is not None:
                return False
        elif change.before is None or [*before.values()] != change.before or [*before] != names:
            return False
        if event.key is None:
            return key is None
        return key is not None and list(event.key) == shape.key_names and list(event.key.values()) == key

    def _transformed(self, event: Event) -> list[Event | Record]:
        """``event`` through every transform, in order; records pass the later ones untouched."""
        pending: list[Event | Record] = [event]
        for transform in self.transforms:
            function = transform.function
            produced: list[Event | Record] = []
            for item in pending:
                if item.__class__ is not Event and not isinstance(item, Event):
                    produced.append(item)  # a record: written as is
                    continue
                try:
                    result = function(item)
                    if result is None:
                        continue
                    if isinstance(result, Event | Record):
                        produced.append(result)
                    elif isinstance(result, Iterable) and not isinstance(result, str | bytes | dict):
                        for one in result:
                            if not isinstance(one, Event | Record):
                                raise TypeError(f"returned a {type(one).__name__} in its list")
                            produced.append(one)
                    else:
                        raise TypeError(
                            f"returned a {type(result).__name__}: expected an Event, a Record, a list of "
                            "them, or None"
                        )
                except Exception as exc:  # the user's code: anything it raises is its failure
                    raise _Failed(transform.name, exc) from exc
            pending = produced
        return pending

    def _change_of(
        self, event: Event, change: ChangeEvent, shape: _Shape | None
    ) -> tuple[ChangeEvent, list[Any] | None]:
        """The `ChangeEvent` a transform's output `Event` stands for (its table, rows and position), and
        the key's values when they are not the row's."""
        last = self.transforms[-1].name
        table = change.table
        if event.table != (table.qualified_name if table else None):
            raise _Failed(last, ValueError("a transform cannot change event.table (route with event.topic)"))
        if not isinstance(event.topic, str) or not event.topic:
            raise _Failed(last, ValueError("event.topic must be a topic name"))
        if shape is None or table is None:  # a logical message: topic and headers only
            return change, None
        op = event.op
        if op not in _OPS or op == "m":
            raise _Failed(last, ValueError(f"op {op!r}: expected one of c, u, d, r, t"))
        output = shape.output
        before = None if event.before is None else self._row(event.before, shape, last)
        after = None if event.after is None else self._row(event.after, shape, last)
        if output is shape.masked and op == change.op and before == change.before and after == change.after:
            key = event.key
            values = change.key_values() if op != "t" else None
            if (key is None and values is None) or (
                key is not None and list(key) == shape.key_names and list(key.values()) == values
            ):
                return change, None  # rows and key unchanged: no new event to build
        out = _rebuild(change, op, output, before, after)
        key = event.key
        if key is None or op == "t":
            if output.has_key and op != "t":
                out.table = self._keyed(shape, ())  # the transform took the key away
            return out, None
        names = tuple(key)
        if list(names) != [output.columns[i].name for i in output.key_indexes]:
            missing = [n for n in names if n not in shape.index]
            if missing:
                raise _Failed(last, ValueError(f"key field {missing[0]} is not a column of {event.table}"))
            out.table = self._keyed(shape, names)
        keyed = out.table
        assert keyed is not None
        row = after if after is not None else before
        values = list(key.values())
        if row is None or [row[i] for i in keyed.key_indexes] != values:
            return out, values  # the key as given, the row as it is
        return out, None

    def _keyed(self, shape: _Shape, names: tuple[str, ...]) -> Table:
        table = shape.keyed.get(names)
        if table is None:
            table = shape.keyed[names] = derive(shape.output, list(shape.output.columns), list(names))
        return table

    @staticmethod
    def _row(values: dict[str, Any], shape: _Shape, transform: str) -> list[Any]:
        names = shape.output_names
        if values.keys() != shape.index:
            extra = [k for k in values if k not in shape.index]
            if extra:
                raise _Failed(
                    transform,
                    ValueError(
                        f"column {extra[0]} is not in the output of {shape.base.qualified_name}: declare it "
                        "with @output_columns(add=...)"
                    ),
                )
            return [values.get(n) for n in names]
        return [values[n] for n in names]

    # -- encoding ---------------------------------------------------------------------

    def _encoded(
        self,
        change: ChangeEvent,
        topic: str,
        original: ChangeEvent,
        event: Event | None = None,
        key_values: list[Any] | None = None,
    ) -> list[Outgoing]:
        """The record of ``change`` (plus a tombstone after a delete); a dead letter when it cannot be
        encoded and ``--on-record-error dead-letter``. ``key_values``: a key other than the row's."""
        try:
            key, value = self.serializer.encode(change)
            if key_values is not None and change.table is not None:
                key = self.serializer.encode_key(change.table, key_values)
        except SchemaError as exc:
            if self.on_record_error != "dead-letter":
                raise
            return [self._dead_letter(original, topic, "encode", str(exc))]
        headers = None
        if event is not None and event.headers:
            headers = [(k, v.encode() if isinstance(v, str) else bytes(v)) for k, v in event.headers.items()]
        out = [Outgoing(topic, key, value, headers)]
        if self.tombstones and change.table is not None:
            if change.op == "d" and (key is not None or self.keyless_tombstones):
                out.append(Outgoing(topic, key, None))
            elif change.op == "u" and change.before is not None:
                old = change.old_key_values()
                if old is not None:
                    out.append(Outgoing(topic, self.serializer.encode_key(change.table, old), None))
        return out

    # -- failures -----------------------------------------------------------------------

    def _transform_failed(self, failure: _Failed, change: ChangeEvent, topic: str) -> list[Outgoing]:
        policy = self.on_transform_error
        where = _position(change)
        table = change.table.qualified_name if change.table else "a logical message"
        if policy == "fail":
            raise TransformError(
                f"transform {failure.transform} failed on {table} at {where}: {failure}; fix it, or set "
                "--on-transform-error skip or dead-letter"
            ) from failure.error
        self.counts[f"transform_errors:{failure.transform}"] += 1
        self._log(
            f"transform:{failure.transform}",
            "transform %s failed on %s at %s: %s; the event is %s",
            failure.transform, table, where, failure,
            "skipped" if policy == "skip" else f"written to {self.dead_letter_topic}",
        )  # fmt: skip
        if policy == "skip":
            return []
        return [self._dead_letter(change, topic, "transform", str(failure), failure.transform)]

    def _dead_letter(
        self, change: ChangeEvent, topic: str, stage: str, error: str, transform: str = ""
    ) -> Outgoing:
        """The dead letter of ``change``: its record without transforms (or its JSON envelope)."""
        self.counts[f"dead_letters:{stage}"] += 1
        if stage != "transform":
            table = change.table.qualified_name if change.table else "a logical message"
            self._log(f"record:{stage}", "%s at %s cannot be written (%s): written to %s", table,
                      _position(change), error, self.dead_letter_topic)  # fmt: skip
        key: bytes | None = None
        try:
            key, value = self.serializer.encode(change)
        except SchemaError:
            try:
                value = orjson.dumps(envelope(change, self.source), default=str)
            except Exception:  # a value even the JSON rendering cannot take: the headers must do
                value = b""
        found = deadletter.headers(
            table=change.table.qualified_name if change.table else "",
            key=_key_json(change),
            position=_position(change),
            error=error,
            stage=stage,
            topic=topic,
            size=len(value),
            transform=transform,
        )
        return Outgoing(self.dead_letter_topic, key, value, found, dead=True)

    def refused(self, out: Outgoing, change: ChangeEvent | None, error: str, limit: int) -> Outgoing:
        """The dead letter of a record Kafka refuses (too large): its value cut to ``limit``."""
        self.counts["dead_letters:kafka"] += 1
        size = len(out.value or b"")
        self._log("record:kafka", "a record for %s (%s bytes) cannot be written (%s): written to %s",
                  out.topic, f"{size:,}", error, self.dead_letter_topic)  # fmt: skip
        found = deadletter.headers(
            table=change.table.qualified_name if change is not None and change.table else "",
            key=_key_json(change) if change is not None else None,
            position=_position(change) if change is not None else "",
            error=error,
            stage="kafka",
            topic=out.topic,
            size=size,
        )
        if out.headers:
            found += [(f"original.{k}", v) for k, v in out.headers]
        value = deadletter.cut(out.value, out.key, found, limit)
        if value is not None and len(value) < size:
            deadletter.set_header(found, "truncated", "true")
        return Outgoing(self.dead_letter_topic, out.key, value, found, dead=True)

    def _log(self, cause: str, message: str, *args: Any) -> None:
        """A warning per cause at most every 10 s, with the count of those in between."""
        now = time.monotonic()
        last, since = self._logged.get(cause, (0.0, 0))
        if last and now - last < 10:
            self._logged[cause] = (last, since + 1)
            return
        self._logged[cause] = (now, 0)
        if since:
            message += f" ({since} more since the last such line)"
        log.warning(message, *args)


def _combined(declared: list[ColumnChanges | None]) -> ColumnChanges | None:
    """The column changes of a chain of transforms, in order."""
    if not any(declared):
        return None
    add: dict[str, str] = {}
    drop: list[str] = []
    for changes in declared:
        if changes is None:
            continue
        for name in changes.drop:
            add.pop(name, None)
            drop.append(name)
        for name, type_name in changes.add.items():
            add[name] = type_name
            if name in drop:
                drop.remove(name)
    return ColumnChanges(add, tuple(drop))


def _raw(record: Record) -> Outgoing:
    if not isinstance(record.topic, str) or not record.topic:
        raise _Failed("a transform", ValueError("Record.topic must be a topic name"))
    headers = [(k, v.encode() if isinstance(v, str) else bytes(v)) for k, v in record.headers.items()]
    return Outgoing(record.topic, _bytes(record.key), _bytes(record.value), headers or None)


def _bytes(value: bytes | str | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise _Failed(
        "a transform", TypeError(f"a Record's key and value are bytes or str, not {type(value).__name__}")
    )


def _position(change: ChangeEvent) -> str:
    return f"{format_lsn(change.commit_lsn)}:{change.total_order}"


def _key_json(change: ChangeEvent) -> Any:
    table = change.table
    if table is None:
        return {"prefix": change.message_prefix}
    try:
        values = change.key_values()
        return None if values is None else render_key(table, values)
    except Exception:  # a value the rendering cannot take: the headers still say where it was
        return None
