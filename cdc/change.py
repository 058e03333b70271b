"""A change event and its transaction: the objects the stream makes per row and per transaction.

`cdc.events` (the event model) uses them; they live here, apart from it, so that the compiled
build (mypyc, `cdc.HOT_MODULES`) makes them native classes: the session builds an event per row
and the serializer reads its fields. Each writes its own ``__init__``: compiled, a dataclass's
generated one is Python code (0.22 us an event against 0.03 natively); the dataclass still gives
equality, repr, `dataclasses.fields` and `dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # cdc.events imports this module: the table type is only named here
    from cdc.events import Table


@dataclass(init=False, slots=True)
class Transaction:
    """What the events of one transaction share."""

    xid: int
    commit_lsn: int
    commit_ts_ms: int
    id: str  # "xid:commit_lsn" unless given
    events: int  # events so far: the next event's total_order is events + 1
    per_table: dict[int, int]  # relation id -> events so far
    commit_ts_us: int  # the commit time in Unix microseconds (0: only milliseconds known)
    previous_end_lsn: int | None  # end LSN of the transaction received before (Debezium's sequence)

    def __init__(
        self,
        xid: int,
        commit_lsn: int,
        commit_ts_ms: int,
        id: str = "",  # Debezium's name for it
        events: int = 0,
        per_table: dict[int, int] | None = None,
        commit_ts_us: int = 0,
        previous_end_lsn: int | None = None,
    ) -> None:
        self.xid = xid
        self.commit_lsn = commit_lsn
        self.commit_ts_ms = commit_ts_ms
        self.id = id or f"{xid}:{commit_lsn}"
        self.events = events
        self.per_table = {} if per_table is None else per_table
        self.commit_ts_us = commit_ts_us
        self.previous_end_lsn = previous_end_lsn

    def next_order(self, relation_id: int) -> tuple[int, int]:
        """(total_order, data_collection_order) of the next event, both from 1."""
        self.events += 1
        n = self.per_table.get(relation_id, 0) + 1
        self.per_table[relation_id] = n
        return self.events, n


@dataclass(init=False, slots=True)
class ChangeEvent:
    """One change: op is c (insert), u, d, r (snapshot read), t (truncate) or m (message)."""

    op: str
    table: Table | None
    before: list[Any] | None
    after: list[Any] | None
    lsn: int
    commit_lsn: int
    xid: int
    commit_ts_ms: int
    total_order: int
    data_collection_order: int
    transaction_id: str | None
    snapshot: str | None  # "true", "last", "incremental" (snapshot reads), "false" streamed
    message_prefix: str | None
    message_content: bytes | None
    commit_ts_us: int  # the commit time in microseconds when known (see `commit_us`)
    last_commit_lsn: int | None  # end LSN of the transaction received before this one

    def __init__(
        self,
        op: str,
        table: Table | None,
        before: list[Any] | None,
        after: list[Any] | None,
        lsn: int,
        commit_lsn: int,
        xid: int,
        commit_ts_ms: int,
        total_order: int = 0,
        data_collection_order: int = 0,
        transaction_id: str | None = None,
        snapshot: str | None = "false",
        message_prefix: str | None = None,
        message_content: bytes | None = None,
        commit_ts_us: int = 0,
        last_commit_lsn: int | None = None,
    ) -> None:
        self.op = op
        self.table = table
        self.before = before
        self.after = after
        self.lsn = lsn
        self.commit_lsn = commit_lsn
        self.xid = xid
        self.commit_ts_ms = commit_ts_ms
        self.total_order = total_order
        self.data_collection_order = data_collection_order
        self.transaction_id = transaction_id
        self.snapshot = snapshot
        self.message_prefix = message_prefix
        self.message_content = message_content
        self.commit_ts_us = commit_ts_us
        self.last_commit_lsn = last_commit_lsn

    @property
    def commit_us(self) -> int:
        """The commit time in Unix microseconds (from the milliseconds when that is all there is)."""
        return self.commit_ts_us or self.commit_ts_ms * 1000

    def key_values(self) -> list[Any] | None:
        """The replica-identity key of the row as it is after the change (before, for deletes)."""
        table = self.table
        if table is None or not table.has_key:
            return None
        row = self.after if self.after is not None else self.before
        if row is None:
            return None
        return [row[i] for i in table.key_indexes]

    def old_key_values(self) -> list[Any] | None:
        """For an update that changed the key: the old key; otherwise None."""
        table = self.table
        if self.op != "u" or table is None or self.before is None or self.after is None:
            return None
        return changed_key(table, self.before, self.after)


def changed_key(table: Table, before: list[Any], after: list[Any]) -> list[Any] | None:
    """The old key of a row whose key an update changed; None when the key stayed (or there is none)."""
    if not table.has_key:
        return None
    old = [before[i] for i in table.key_indexes]
    new = [after[i] for i in table.key_indexes]
    return old if old != new else None
