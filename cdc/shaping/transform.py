"""Transforms: plain Python functions that change, route, split or drop change events.

A transform is any callable taking one `Event` and returning:

- the event itself (changed or not), or a changed copy (`Event.copy`);
- several events (a list or any iterable): each is written;
- a `Record`: a Kafka record of its own (topic, key, value, headers), written
  as is, without the envelope or a schema (the outbox pattern: the payload
  column becomes the value);
- ``None`` (or an empty list): the event is dropped. It still counts as
  delivered: the position of its transaction is confirmed as usual.

``--transform package.module:function`` (repeatable) names them; they run in
the order given, each on what the one before returned (records pass through
untouched). The named object may also be a class: it is instantiated once,
without arguments, and its instances called. Transforms run in the
connector's process (and in each snapshot worker): the package must be
importable there (installed in cdc's environment, or on ``PYTHONPATH``).

What an event holds, and what may be changed:

==============  ==================================================================
``table``       ``"schema.table"``, None for a logical message; read-only
``op``          ``c`` insert, ``u`` update, ``d`` delete, ``r`` snapshot read,
                ``t`` truncate, ``m`` logical message
``key``         the Kafka key's fields (a dict), None without a key. Set it to
                key the record by other columns of the row (their values are
                taken from this dict)
``before``      the row before the change (updates with an old row, deletes)
``after``       the row after it (inserts, updates, reads); None otherwise
``topic``       where the record goes (``<prefix>.<schema>.<table>``); set it
                to route
``headers``     Kafka headers to add, ``{name: str | bytes}``
``source``      position and transaction (`Source`); read-only
``message``     a logical message's prefix and content (`Message`), else None
==============  ==================================================================

Row values are cdc's wire values (`cdc.pgtypes`): ``int`` for integers,
``date`` (days since 1970-01-01), ``time`` and ``timestamp[tz]``
(microseconds since midnight / since 1970-01-01 UTC); ``Decimal`` for
``numeric(p,s)``, ``str`` for ``numeric`` without a scale, text, ``uuid``,
``json[b]`` (its text), ``interval`` (ISO 8601) and types cdc has no
converter for; ``bytes`` for ``bytea``; lists for arrays. A value the server
did not send (an unchanged TOASTed column) is the placeholder
(``--unavailable-placeholder``), typed like its column: the string, its
bytes for ``bytea``, a one-item list for arrays. Columns masked by ``--mask-columns`` arrive
masked.

The Avro schema of the events a transform writes is the table's, so values
must keep their column's type. A transform that adds, drops or retypes
columns declares it with `output_columns`, and the schema follows.

An exception raised by a transform is handled as ``--on-transform-error``
says: ``fail`` stops the connector (one line naming the transform and the
position), ``skip`` drops the event (a log line and
``cdc_transform_errors_total``), ``dead-letter`` writes the original event to
``<prefix>.dead-letter`` with the error in its headers. Transforms may keep
state, but are called from one thread; they should be fast: every event
waits for them (``make bench`` measures the cost of one).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

from cdc.errors import ConfigError
from cdc.pgtypes import BUILTIN_ARRAYS, ColumnType, column_type

if TYPE_CHECKING:
    from cdc.change import ChangeEvent

__all__ = [
    "Event",
    "Message",
    "Record",
    "Source",
    "Transform",
    "output_columns",
]


@dataclass(frozen=True, slots=True)
class Source:
    """Where a change comes from: its table, position and transaction (read-only)."""

    schema: str | None
    table: str | None
    lsn: int  # WAL position of the change (the snapshot's position for reads)
    commit_lsn: int  # of its transaction; with total_order, unique and increasing
    xid: int  # transaction id (0 for snapshot reads)
    ts_ms: int  # commit time, Unix milliseconds
    snapshot: str | None  # "true", "last", "incremental" for reads; None when streamed
    transaction_id: str | None = None
    total_order: int = 0  # the event's place in its transaction, from 1

    @property
    def position(self) -> str:
        """``commit_lsn/total_order`` as text: unique per event, increasing (reads share theirs)."""
        return f"{self.commit_lsn:X}:{self.total_order}"


@dataclass(frozen=True, slots=True)
class Message:
    """A logical message (``pg_logical_emit_message``): op ``m``."""

    prefix: str
    content: bytes


@dataclass(slots=True)
class Record:
    """A Kafka record a transform writes as is: no envelope, no schema.

    ``key`` and ``value`` are bytes, or text (written as UTF-8); a None value
    is a tombstone.
    """

    topic: str
    value: bytes | str | None
    key: bytes | str | None = None
    headers: dict[str, str | bytes] = field(default_factory=dict)


class Event:
    """One change, as a transform sees it; a transform may change ``op``, ``key``, ``before``,
    ``after``, ``topic`` and ``headers`` (see the module's table).

    Tests of a transform can make one: ``Event("public.orders", "c", after={"id": 1})``.
    """

    __slots__ = ("_change", "_source", "after", "before", "headers", "key", "op", "table", "topic")

    def __init__(
        self,
        table: str | None,
        op: str,
        *,
        key: dict[str, Any] | None = None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        topic: str = "",
        headers: dict[str, str | bytes] | None = None,
        source: Source | None = None,
    ) -> None:
        self.table = table
        self.op = op
        self.key = key
        self.before = before
        self.after = after
        self.topic = topic
        self.headers: dict[str, str | bytes] = {} if headers is None else headers
        self._source = source
        self._change: ChangeEvent | None = None

    @property
    def source(self) -> Source:
        """Position, transaction and commit time of the change."""
        if self._source is None:
            change = self._change
            if change is None:
                schema, _, name = (self.table or "").rpartition(".")
                self._source = Source(schema or None, name or None, 0, 0, 0, 0, None)
            else:
                table = change.table
                self._source = Source(
                    table.schema if table else None,
                    table.name if table else None,
                    change.lsn,
                    change.commit_lsn,
                    change.xid,
                    change.commit_ts_ms,
                    change.snapshot,
                    change.transaction_id,
                    change.total_order,
                )
        return self._source

    @property
    def message(self) -> Message | None:
        """The prefix and content of a logical message (op ``m``); None for row changes."""
        change = self._change
        if change is None or change.message_prefix is None:
            return None
        return Message(change.message_prefix, change.message_content or b"")

    def copy(self, **changes: Any) -> Event:
        """A copy (its dicts copied too) with ``changes`` applied: ``event.copy(topic="audit")``."""
        event = Event(
            self.table,
            changes.pop("op", self.op),
            key=changes.pop("key", None if self.key is None else dict(self.key)),
            before=changes.pop("before", None if self.before is None else dict(self.before)),
            after=changes.pop("after", None if self.after is None else dict(self.after)),
            topic=changes.pop("topic", self.topic),
            headers=changes.pop("headers", dict(self.headers)),
            source=self._source,
        )
        if changes:
            raise TypeError(f"Event.copy() cannot change {', '.join(changes)}")
        event._change = self._change
        return event

    def __repr__(self) -> str:
        return f"Event({self.table!r}, {self.op!r}, topic={self.topic!r})"


#: What a transform returns (see the module's docstring).
Output = Event | Record | Iterable[Event | Record] | None
Transform = Callable[[Event], Output]

F = TypeVar("F")

#: The attribute `output_columns` sets on a transform.
_DECLARED: Final = "cdc_output_columns"

#: Type names a declaration may use (Postgres' names and their usual aliases); ``name[]`` for arrays.
TYPE_NAMES: Final[dict[str, int]] = {
    "bool": 16, "boolean": 16, "bytea": 17, "int8": 20, "bigint": 20, "int2": 21, "smallint": 21,
    "int4": 23, "int": 23, "integer": 23, "text": 25, "oid": 26, "json": 114, "float4": 700,
    "real": 700, "float8": 701, "double precision": 701, "varchar": 1043, "date": 1082,
    "time": 1083, "timestamp": 1114, "timestamptz": 1184, "interval": 1186, "numeric": 1700,
    "uuid": 2950, "jsonb": 3802,
}  # fmt: skip


def resolve_type(name: str) -> ColumnType:
    """The `ColumnType` of a type name in a declaration (``text``, ``bigint``, ``jsonb[]``, ...)."""
    base = name.strip().lower()
    array = base.endswith("[]")
    oid = TYPE_NAMES.get(base.removesuffix("[]").strip())
    if oid is None:
        raise ConfigError(
            f"unknown column type {name!r} in output_columns: use one of {', '.join(TYPE_NAMES)}"
        )
    if array:
        oid = next(a for a, element in BUILTIN_ARRAYS.items() if element == oid)
    return column_type(oid)


@dataclass(frozen=True, slots=True)
class ColumnChanges:
    """What a transform does to the columns: ``add`` (new or retyped, by type name) and ``drop``."""

    add: Mapping[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()


def output_columns(add: Mapping[str, str] | None = None, drop: Iterable[str] = ()) -> Callable[[F], F]:
    """Declare the columns a transform adds (or retypes) and drops, so that its events' Avro schema
    follows: ``@output_columns(add={"full_name": "text"}, drop=["password"])``.

    Types are Postgres names (`TYPE_NAMES`, ``[]`` for arrays). Without a declaration, a transform
    keeps the table's columns and types (masked columns are text).
    """
    changes = ColumnChanges(dict(add or {}), tuple(drop))
    for type_name in changes.add.values():
        resolve_type(type_name)

    def declare(transform: F) -> F:
        setattr(transform, _DECLARED, changes)
        return transform

    return declare


@dataclass(frozen=True, slots=True)
class Loaded:
    """A transform named by ``--transform``, ready to call."""

    name: str  # as given: package.module:function
    function: Transform
    columns: ColumnChanges | None


def load(spec: str) -> Loaded:
    """Import ``package.module:attribute``; a class is instantiated once. `ConfigError` when it cannot be."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: anything may go wrong while importing it
        raise ConfigError(
            f"cannot load transform {spec}: {type(exc).__name__}: {exc}; is its package installed in cdc's "
            "environment (or on PYTHONPATH)?"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"cannot load transform {spec}: {module_name} has no {attribute}")
    if inspect.isclass(target):
        try:
            target = target()
        except Exception as exc:
            raise ConfigError(f"cannot load transform {spec}: {type(exc).__name__}: {exc}") from None
    if not callable(target):
        raise ConfigError(f"transform {spec} is not callable: name a function (or a class)")
    declared = getattr(target, _DECLARED, None)
    return Loaded(spec, target, declared if isinstance(declared, ColumnChanges) else None)
