"""Closing the gap a lost slot left (``--on-slot-lost recreate``): mark it, then read every table again.

The changes between the lost slot's last confirmed position and the new
slot's consistent point ``C`` can never be streamed. Before streaming from
``C``, every captured table with a key gets a truncate event (``op: "t"``,
``source.snapshot = "incremental"``, position ``C``), so that a consumer
forgets rows deleted during the gap, and an incremental snapshot of it is
queued: the rows are read again while the stream goes on, and a streamed
change always wins over the older read (see `cdc.snapshot.incremental`). Once
that snapshot is done the topics rebuild the tables exactly. A table without
a key cannot be snapshotted incrementally: it gets no truncate (nothing would
refill it) and a warning that its gap stays open. With ``t`` in ``--skip-ops``
(``--compat debezium``'s default, whose consumers take no truncates) the
tables are read again without the marker: rows deleted during the gap stay.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from cdc import slots
from cdc.change import ChangeEvent
from cdc.checkpoint import InFlight
from cdc.config import Settings
from cdc.errors import SinkError
from cdc.events import table_topic
from cdc.lsn import format_lsn
from cdc.pgtypes import TypeCatalog
from cdc.shaping.select import Selection
from cdc.snapshot.state import IncrementalTask, SnapshotState, SnapshotStore
from cdc.snapshot.tables import captured_tables, describe_table, normalize_table, table_from_spec
from cdc.status import Status
from cdc.writer import RecordWriter

log = logging.getLogger(__name__)


def close_gap(
    settings: Settings,
    status: Status,
    conn: psycopg.Connection[Any],
    writer: RecordWriter,
    catalog: TypeCatalog,
    system_id: str,
    database: str,
    slot_lsn: int,
) -> None:
    """Mark the gap on every captured table and queue them all for an incremental snapshot.

    Runs before START_REPLICATION of the new slot; the truncates are in Kafka
    before ``snapshot.json`` queues the reads, and ``slot_lost.json`` is removed
    last, so a crash in between only repeats the work.
    """
    s = settings
    gap = slots.pending_gap(s)
    tables = captured_tables(conn, s.tables, s.publication, s.exclude_tables)
    token = InFlight(slot_lsn)
    ts_ms = int(time.time() * 1000)
    queued: list[str] = []
    for name in tables:
        table = table_from_spec(describe_table(conn, name, s.publication), catalog)
        if not table.has_key:
            log.warning(
                "table %s has no primary key or replica identity index: it cannot be read again while "
                "streaming, so the changes it had while the slot was lost stay missing",
                name,
                extra={"table": name},
            )
            continue
        if "t" not in s.skipped_ops:  # --skip-ops t (--compat debezium's default): no truncate marker
            topic = table_topic(s.topic_prefix, table)
            writer.ensure_topic(topic)
            event = ChangeEvent("t", table, None, None, slot_lsn, slot_lsn, 0, ts_ms, snapshot="incremental")
            writer.write(event, token, topic)
        queued.append(name)
    if not writer.flush(60):
        raise SinkError("kafka did not acknowledge the gap markers within 60 s", retriable=True)
    writer.poll()
    if token.pending:
        raise SinkError("kafka did not acknowledge the gap markers", retriable=True)
    store = SnapshotStore(s.instance_dir)
    state = store.load()
    if not state.belongs_to(s.slot, system_id, database):
        selection = Selection.from_settings(s)
        exact = selection.exact or selection.everything
        listed = [normalize_table(t) for t in s.tables] if exact else tables
        state = SnapshotState(
            s.slot, system_id, database, slot_lsn, "complete", listed, started_at=time.time()
        )
    state.consistent_lsn = slot_lsn
    if state.phase == "running":
        state.phase = "complete"  # the unfinished initial snapshot is replaced by the reads queued here
    state.incremental = [t for t in state.incremental if t.table not in queued]
    state.incremental += [IncrementalTask(name) for name in queued]
    store.save(state)
    slots.gap_closed(s)
    # the status shows the reads queued from now on, not the last session's empty queue
    status.snapshot["incremental"] = [{"table": t.table, "rows": t.rows} for t in state.incremental]
    status.slot_recreations += 1
    lost = f"after {gap['confirmed_lsn']}" if gap else "while the slot was lost"
    log.warning(
        "slot %s was recreated at %s: the changes %s are replaced by reading %d tables again "
        "(incremental snapshot, a truncate event first on each topic)",
        s.slot, format_lsn(slot_lsn), lost, len(queued),
        extra={"lsn": format_lsn(slot_lsn)},
    )  # fmt: skip
