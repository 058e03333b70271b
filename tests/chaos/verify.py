"""Read every change topic and hold it against the workload's ledger.

The checks, for the records of all topics of a prefix:

(a) every change of every committed transaction is present, complete (its
    events numbered 1..n by ``transaction.total_order``, all with one
    ``commit_lsn`` that lies between the WAL positions the writer saw before
    and after the transaction);
(b) nothing of a rolled-back transaction or savepoint is present;
(c) per key, the changes appear in commit order, exactly the sequence the
    writers committed;
(d) a repeat of a position ``(source.commit_lsn, transaction.total_order)``
    is counted as a duplicate and must be byte-for-byte the same event (the
    processing time ``ts_ms``, ``ts_us``, ``ts_ns`` aside); a different event at a known position
    is a violation;
(e) with ``exactly_once`` (``--delivery exactly-once``, read by a
    ``read_committed`` consumer): no duplicates at all, not even exact
    repeats, of a change or of a snapshot read.

Changes a broker lost by itself (Tansu keeps records in memory) are excused
only for transactions that began before the *loss horizon*: the position the
connector had confirmed when that broker went away. Everything after it must
have been sent again. A durable broker (Apache Kafka) has no loss horizon:
the horizon stays 0 and every missing change is a violation.

Records are decoded by a `Decode` function (topic, key bytes, value bytes) ->
(key, value), so the same checks run on ``--format json`` and on Avro.
"""

from __future__ import annotations

import base64
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from kafka import TopicPartition

from cdc.avro import SchemaRegistry
from cdc.consume import RecordDecoder
from cdc.errors import CdcError
from cdc.events import schemas_topic
from cdc.kafka import read_schema_records
from tests.chaos.workload import BULK, SCHEMA, TABLES, TXLOG, Change, Ledger, Txn
from tests.support.topics import RawRecord, new_consumer

Decode = Callable[[str, bytes | None, bytes | None], tuple[Any, Any]]


def json_decode(_topic: str, key: bytes | None, value: bytes | None) -> tuple[Any, Any]:
    """``--format json``: key and value are UTF-8 JSON documents."""
    return (None if key is None else orjson.loads(key)), (None if value is None else orjson.loads(value))


def avro_decoder(bootstrap: str, prefix: str) -> Decode:
    """``--format avro``: `cdc.consume` decodes with the writer schemas of ``<prefix>.schemas``.

    The schema topic is read when this is called: call it after the records were written.
    """
    registry = SchemaRegistry()
    for key, value in read_schema_records(bootstrap, schemas_topic(prefix)):
        registry.load(key, value)
    records = RecordDecoder(registry)

    def decode(_topic: str, key: bytes | None, value: bytes | None) -> tuple[Any, Any]:
        return (None if key is None else records.decode(key)), (
            None if value is None else records.decode(value)
        )

    return decode


def decoder(format: str, bootstrap: str, prefix: str) -> Decode:
    return avro_decoder(bootstrap, prefix) if format == "avro" else json_decode


def read_all(
    bootstrap: str,
    prefix: str,
    live: bool = False,
    idle_ms: int = 1000,
    timeout: float = 300,
    isolation: str = "read_uncommitted",
) -> list[RawRecord]:
    """Every record of the change topics ``<prefix>.*`` (not the schema, transaction, heartbeat or
    exactly-once offsets topics).

    Reads every partition past the end offset it had when reading began.
    Tansu's end offset can be the last batch's base offset + 1 rather than
    the true end, but a fetch returns whole batches, so a position past it
    means the whole last batch was read (as `cdc.consume` does). A stream
    still being written (``live``) is read to that point; otherwise an empty
    poll that moved no position also ends the reading (one that moved a
    position skipped aborted records). ``isolation="read_committed"`` reads what
    Kafka committed (up to the last stable offset), as exactly-once consumers do.
    """
    consumer = new_consumer(bootstrap, isolation)
    try:
        not_changes = {f"{prefix}.{name}" for name in ("schemas", "transaction", "heartbeat", "offsets")}
        topics = sorted(t for t in consumer.topics() if t.startswith(prefix + ".") and t not in not_changes)
        partitions = [
            TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends: dict[TopicPartition, int] = consumer.end_offsets(partitions)
        records: list[RawRecord] = []
        deadline = time.monotonic() + timeout
        positions = {tp: consumer.position(tp) for tp in ends}
        while not all(positions[tp] >= end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading the topics of {prefix} took more than {timeout:g} s")
            batch = consumer.poll(timeout_ms=idle_ms, max_records=50_000)
            before, positions = positions, {tp: consumer.position(tp) for tp in ends}
            # an empty poll that moved a position skipped aborted records (read_committed): a long
            # aborted run takes more than one poll to skip, and what follows it must still be read
            if not batch and positions == before and not live:
                break
            for tp, items in batch.items():
                records.extend(
                    RawRecord(tp.topic, tp.partition, r.offset, r.timestamp, r.key, r.value) for r in items
                )
        records.sort(key=lambda r: (r.topic, r.partition, r.offset))
        return records
    finally:
        consumer.close()


@dataclass(slots=True)
class Event:
    """A decoded change record, reduced to what identifies it."""

    topic: str
    partition: int
    offset: int
    position: tuple[int, int]
    txn_id: str
    commit_lsn: int
    table: str
    key: int
    op: str
    version: int | None
    tag: int | None  # the writer's transaction tag the row carries
    digest: bytes
    lag_ms: int


#: the violations a report's summary lists
SHOWN = 25


@dataclass
class Report:
    """What the verifier found. ``ok`` means no violation."""

    records: int = 0
    events: int = 0
    tombstones: int = 0
    transactions_expected: int = 0
    changes_expected: int = 0
    changes_verified: int = 0
    duplicates: int = 0
    lost_by_broker: int = 0
    transactions_lost_by_broker: int = 0
    aborted_checked: int = 0
    snapshot_reads: int = 0
    max_lag_ms: int = 0
    #: every violation (the summary shows the first `SHOWN`): a classifier of the failures, such as
    #: the timeout-gap check of test_faults, must see them all, however many a loaded machine makes
    violations: list[str] = field(default_factory=list)

    @property
    def violation_count(self) -> int:
        return len(self.violations)

    @property
    def ok(self) -> bool:
        return not self.violations

    def violate(self, text: str) -> None:
        self.violations.append(text)

    def summary(self) -> str:
        text = (
            f"{self.changes_verified}/{self.changes_expected} changes of {self.transactions_expected} "
            f"transactions verified, {self.duplicates} duplicates, {self.lost_by_broker} changes "
            f"({self.transactions_lost_by_broker} transactions) lost by the broker itself, "
            f"{self.aborted_checked} rolled-back transactions absent, {self.snapshot_reads} snapshot reads, "
            f"{self.records} records read, "
            f"max lag {self.max_lag_ms} ms, {self.violation_count} violations"
        )
        if self.violations:
            text += ":\n  " + "\n  ".join(self.violations[:SHOWN])
        if len(self.violations) > SHOWN:
            text += f"\n  ... {len(self.violations) - SHOWN} more"
        return text


_TABLE_KEYS = {f"{SCHEMA}.{TXLOG}": "txn", **{f"{SCHEMA}.{t}": "id" for t in (*TABLES, BULK)}}


def _event(record: RawRecord, key: Any, value: dict[str, Any], report: Report) -> Event | None:
    source = value.get("source") or {}
    transaction = value.get("transaction")
    op = value.get("op")
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    if transaction is None or op not in ("c", "u", "d", "m"):
        report.violate(f"{where}: unexpected event (op {op!r}, transaction {transaction!r})")
        return None
    commit_lsn = int(source["commit_lsn"])
    position = (commit_lsn, int(transaction["total_order"]))
    ts_ms = value.get("ts_ms")
    content = {k: v for k, v in value.items() if k not in ("ts_ms", "ts_us", "ts_ns")}
    digest = orjson.dumps([record.topic, key, content], option=orjson.OPT_SORT_KEYS)
    lag = max(0, record.timestamp_ms - int(source.get("ts_ms") or record.timestamp_ms))
    if op == "m":
        message = value.get("message") or {}
        number = int(base64.b64decode(message.get("content") or b"").decode() or 0)
        return Event(record.topic, record.partition, record.offset, position, str(transaction["id"]),
                     commit_lsn, "messages", number, "m", 0, number, digest, lag)  # fmt: skip
    assert ts_ms is not None
    table = f"{source.get('schema')}.{source.get('table')}"
    column = _TABLE_KEYS.get(table)
    if column is None:
        report.violate(f"{where}: event of a table the workload does not write: {table}")
        return None
    row = value.get("after") or value.get("before") or {}
    if not isinstance(key, dict) or key.get(column) != row.get(column):
        report.violate(f"{where}: key {key!r} does not match the row's {column} {row.get(column)!r}")
        return None
    after = value.get("after")
    version: int | None = 1
    tag: int | None = None
    if table.endswith(f".{TXLOG}"):
        tag = int(row["txn"])
    else:
        version = row.get("version")
        tag = None if after is None else after.get("txn")
    return Event(record.topic, record.partition, record.offset, position, str(transaction["id"]), commit_lsn,
                 table, int(row[column]), str(op), version, tag, digest, lag)  # fmt: skip


@dataclass(slots=True)
class Read:
    """A snapshot read (op ``r``): the row as a snapshot saw it."""

    topic: str
    offset: int
    table: str
    key: int
    version: int
    tag: int
    digest: bytes


def _read(record: RawRecord, key: Any, value: dict[str, Any], report: Report) -> Read | None:
    source = value.get("source") or {}
    table = f"{source.get('schema')}.{source.get('table')}"
    column = _TABLE_KEYS.get(table)
    row = value.get("after") or {}
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    if column is None or not isinstance(key, dict) or key.get(column) != row.get(column):
        report.violate(f"{where}: snapshot read of {table} with key {key!r} and row {row!r}")
        return None
    version = 1 if column == "txn" else int(row["version"])
    # what identifies the read: the row, not where in the snapshot it came (source.snapshot "last" moves)
    digest = orjson.dumps([record.topic, key, value.get("before"), row], option=orjson.OPT_SORT_KEYS)
    return Read(record.topic, record.offset, table, int(row[column]), version, int(row["txn"]), digest)


def _change_id(change: Change) -> tuple[str, int, str, int | None]:
    # a delete of a DEFAULT-identity table carries only the key: ids are never reused, so the key is enough
    return (change.table, change.key, change.op, None if change.op == "d" else change.version)


def verify(
    records: list[RawRecord],
    ledger: Ledger,
    decode: Decode = json_decode,
    horizon: int = 0,
    confirmed: int | None = None,
    snapshot_lsn: int | None = None,
    exactly_once: bool = False,
) -> Report:
    """Check ``records`` against ``ledger``; see the module docstring.

    ``horizon``: transactions that began before it may be missing entirely
    (a broker lost them after the connector had confirmed them).
    ``confirmed``: verify a stream still running: only transactions whose
    commit the connector has confirmed (``lsn_after <= confirmed``) must be
    present, later ones may be missing or incomplete.
    ``snapshot_lsn``: the stream began with an initial snapshot at this
    consistent point: transactions committed before it must not be streamed
    but their rows must arrive as snapshot reads (`_check_snapshot`).
    ``exactly_once``: a duplicate, even an exact repeat, is a violation (e).
    """
    report = Report(records=len(records))
    reads: dict[tuple[str, int, int], Read] = {}
    committed, aborted = ledger.snapshot()
    by_tag = {t.tag: t for t in committed}
    seen: dict[tuple[int, int], bytes] = {}
    first: list[Event] = []
    # per partition, the keys whose latest delete still waits for its tombstone: a delete sent again
    # (the next session repeats what the last did not confirm) owes one tombstone, not two, so a
    # kill -9 between a delete and its tombstone is not a violation once the repeat brings both
    owed: dict[tuple[str, int], set[str]] = defaultdict(set)
    last_position: dict[tuple[str, str], tuple[int, int]] = {}

    for record in records:
        try:
            key, value = decode(record.topic, record.key, record.value)
        except CdcError as exc:
            report.violate(f"{record.topic}[{record.partition}]@{record.offset}: cannot decode: {exc}")
            continue
        if value is None:
            report.tombstones += 1
            if isinstance(key, dict) and len(key) == 1:
                owed[(record.topic, record.partition)].discard(orjson.dumps(key).decode())
            continue
        if value.get("op") == "r" and snapshot_lsn is not None:
            read = _read(record, key, value, report)
            if read is not None:
                known_read = reads.setdefault((read.table, read.key, read.version), read)
                if known_read is not read:
                    if known_read.digest != read.digest:
                        report.violate(f"{record.topic}@{record.offset}: snapshot read repeated differently")
                    elif exactly_once:
                        report.violate(
                            f"{record.topic}@{record.offset}: {read.table} id {read.key} v{read.version} "
                            f"read again (first at offset {known_read.offset}): exactly-once reads it once"
                        )
                    report.duplicates += 1
            continue
        event = _event(record, key, value, report)
        if event is None:
            continue
        report.events += 1
        report.max_lag_ms = max(report.max_lag_ms, event.lag_ms)
        known = seen.get(event.position)
        if known is not None:
            if known != event.digest:
                report.violate(
                    f"{event.topic}@{event.offset}: position {event.position} repeated with different "
                    f"content: {event.digest[:300]!r} vs first {known[:300]!r}"
                )
            else:
                report.duplicates += 1
                if exactly_once:
                    report.violate(
                        f"{event.topic}@{event.offset}: position {event.position} ({event.table} id "
                        f"{event.key}) delivered again: exactly-once delivers it once"
                    )
            if event.op == "d":  # a repeated delete is followed by a repeated tombstone
                owed[(event.topic, event.partition)].add(orjson.dumps(key).decode())
            continue
        seen[event.position] = event.digest
        per_key = (event.topic, f"{event.table}:{event.key}")
        previous = last_position.get(per_key)
        if previous is not None and event.position < previous:
            report.violate(
                f"{event.topic}@{event.offset}: {event.table} id {event.key} at {event.position} "
                f"after {previous}: not in commit order"
            )
        last_position[per_key] = max(event.position, previous or event.position)
        waiting, key_text = owed[(event.topic, event.partition)], orjson.dumps(key).decode()
        if key_text in waiting:  # a repeat of the delete would have come first
            report.violate(
                f"{event.topic}: delete of {key_text} without its tombstone before {event.position}"
            )
            waiting.discard(key_text)
        if event.op == "d":
            waiting.add(key_text)
        first.append(event)

    if confirmed is None:
        for (topic, _partition), keys in owed.items():
            for key_text in sorted(keys):
                report.violate(f"{topic}: delete of {key_text} without its tombstone")

    # group the first occurrences by transaction
    groups: dict[str, list[Event]] = defaultdict(list)
    for event in first:
        groups[event.txn_id].append(event)
    found: dict[int, list[Event]] = {}
    for txn_id, events in groups.items():
        tags = {e.tag for e in events if e.tag is not None}
        if not tags and confirmed is not None:
            continue  # read while in flight, its txlog record not yet: an unconfirmed transaction
        if len(tags) != 1:
            report.violate(f"transaction {txn_id}: events carry tags {sorted(tags)}, expected exactly one")
            continue
        tag = tags.pop()
        if tag in aborted:
            report.violate(f"transaction {txn_id}: changes of rolled-back transaction {tag} reached Kafka")
            continue
        if tag not in by_tag:
            report.violate(f"transaction {txn_id}: tag {tag} was never committed by the workload")
            continue
        if tag in found:
            report.violate(f"tag {tag}: in two transactions ({txn_id} and {found[tag][0].txn_id})")
            continue
        found[tag] = events
    report.aborted_checked = len(aborted)

    expected_per_key: dict[tuple[str, int], list[tuple[str, int | None]]] = defaultdict(list)
    before_snapshot: list[Txn] = []
    for txn in committed:
        found_events = found.get(txn.tag)
        if snapshot_lsn is not None and txn.lsn_before < snapshot_lsn:
            if found_events is None:
                before_snapshot.append(txn)  # in the snapshot, not in the stream
                continue
            if txn.lsn_after <= snapshot_lsn:
                report.violate(f"transaction {txn.tag} committed before the snapshot and was streamed too")
        required = confirmed is None or txn.lsn_after <= confirmed
        report.transactions_expected += 1 if required else 0
        report.changes_expected += len(txn.changes) if required else 0
        if found_events is None:
            if not required:
                continue
            if txn.lsn_before < horizon:
                report.lost_by_broker += len(txn.changes)
                report.transactions_lost_by_broker += 1
                continue
            report.violate(
                f"transaction {txn.tag} ({txn.kind}, {len(txn.changes)} changes, committed between "
                f"{txn.lsn_before:X} and {txn.lsn_after:X}) is missing"
            )
            continue
        lossy = txn.lsn_before < horizon
        _check_transaction(txn, found_events, required, lossy, report)
        present = {(e.table, e.key, e.op, None if e.op == "d" else e.version) for e in found_events}
        for change in txn.changes:
            if lossy and _change_id(change) not in present:
                continue  # lost by the broker: not part of the key's sequence in Kafka
            expected_per_key[(change.table, change.key)].append((change.op, change.version))

    if snapshot_lsn is not None:
        # the rebuild needs every record: not while streaming goes on, nor after a broker lost some
        complete = confirmed is None and horizon == 0
        _check_snapshot(records_order(first, reads), committed, before_snapshot, complete, report)
    if confirmed is None:
        # (c) per key, the sequence of changes in topic order is the committed one
        accepted = {events[0].txn_id for events in found.values()}
        observed_per_key: dict[tuple[str, int], list[tuple[str, int | None]]] = defaultdict(list)
        for event in first:
            if event.txn_id in accepted:
                observed_per_key[(event.table, event.key)].append((event.op, event.version))
        for key_id, expected in expected_per_key.items():
            observed = observed_per_key.get(key_id, [])
            same = len(observed) == len(expected) and all(
                o_op == e_op and (o_version == e_version or (o_op == "d" and o_version is None))
                for (o_op, o_version), (e_op, e_version) in zip(observed, expected, strict=True)
            )
            if not same:
                reordered = _as_multiset(observed) == _as_multiset(expected)
                report.violate(
                    f"{key_id[0]} id {key_id[1]}: changes {observed} in Kafka, committed {expected}"
                    + (", the same changes reordered" if reordered else "")
                )
    return report


def _as_multiset(changes: list[tuple[str, int | None]]) -> Counter[tuple[str, int | None]]:
    """A key's changes regardless of order (a delete's version is not in its event)."""
    return Counter((op, None if op == "d" else version) for op, version in changes)


def _check_transaction(txn: Txn, events: list[Event], required: bool, lossy: bool, report: Report) -> None:
    """One transaction's first occurrences against what its writer did.

    ``lossy``: it began before the loss horizon, so the broker may have lost
    part of it (a session that outlived a broker restart, acknowledged by the
    old broker); what is present must still be right.
    """
    expected = Counter(_change_id(c) for c in txn.changes)
    observed = Counter((e.table, e.key, e.op, None if e.op == "d" else e.version) for e in events)
    if observed != expected:
        missing = expected - observed
        extra = observed - expected
        if lossy and not extra:
            report.lost_by_broker += sum(missing.values())
        elif extra or required:
            report.violate(
                f"transaction {txn.tag} ({txn.kind}): missing {sorted(missing)[:5]} "
                f"({sum(missing.values())}), unexpected {sorted(extra)[:5]} ({sum(extra.values())})"
            )
    orders = sorted(e.position[1] for e in events)
    if required and observed == expected and orders != list(range(1, len(txn.changes) + 1)):
        report.violate(f"transaction {txn.tag}: total_order {orders[:10]}... is not 1..{len(txn.changes)}")
    commit_lsns = {e.commit_lsn for e in events}
    if len(commit_lsns) != 1:
        report.violate(f"transaction {txn.tag}: several commit_lsn {sorted(commit_lsns)}")
    commit_lsn = min(commit_lsns)
    if not txn.lsn_before <= commit_lsn < (txn.lsn_after or commit_lsn + 1):
        report.violate(
            f"transaction {txn.tag}: commit_lsn {commit_lsn:X} outside the writer's "
            f"[{txn.lsn_before:X}, {txn.lsn_after:X})"
        )
    for e in events:
        if e.op in ("c", "u", "m") and e.tag != txn.tag:
            report.violate(f"transaction {txn.tag}: {e.table} id {e.key} carries tag {e.tag}")
    report.changes_verified += sum((observed & expected).values())


def records_order(first: list[Event], reads: dict[tuple[str, int, int], Read]) -> list[Event | Read]:
    """Streamed events and snapshot reads (first occurrences) in topic order."""
    merged: list[Event | Read] = [*first, *reads.values()]
    merged.sort(key=lambda e: (e.topic, e.offset))
    return merged


def _check_snapshot(
    in_topic_order: list[Event | Read],
    committed: list[Txn],
    before: list[Txn],
    complete: bool,
    report: Report,
) -> None:
    """Snapshot reads: real committed row states, none older than the consistent point, and with
    the stream they rebuild every table exactly (when ``complete``: every record is there).

    A snapshot resumed after a crash reads its remaining chunks from a newer snapshot while the
    stream replays from the consistent point (cdc.snapshot), so a read may be newer than the
    changes after it; the tables still converge, and that is what is checked.
    """
    history: dict[tuple[str, int], dict[int, int]] = defaultdict(dict)  # key -> version -> tag
    final: dict[tuple[str, int], int] = {}
    for txn in committed:
        for change in txn.changes:
            if change.table == "messages":
                continue
            where = (change.table, change.key)
            if change.op == "d":
                final.pop(where, None)
            else:
                history[where][change.version] = txn.tag
                final[where] = change.version
    at_snapshot: dict[tuple[str, int], int] = {}
    for txn in before:
        for change in txn.changes:
            if change.table == "messages":
                continue
            if change.op == "d":
                at_snapshot.pop((change.table, change.key), None)
            else:
                at_snapshot[(change.table, change.key)] = change.version
    rebuilt: dict[tuple[str, int], int] = {}
    for item in in_topic_order:
        where = (item.table, item.key)
        if isinstance(item, Read):
            report.snapshot_reads += 1
            if history[where].get(item.version) != item.tag:
                report.violate(
                    f"snapshot read of {item.table} id {item.key} v{item.version}: never committed"
                )
            elif item.version < at_snapshot.get(where, 0):
                report.violate(
                    f"snapshot read of {item.table} id {item.key} v{item.version} is older than the "
                    f"consistent point's v{at_snapshot[where]}"
                )
            rebuilt[where] = item.version
        elif item.table != "messages":
            if item.op == "d":
                rebuilt.pop(where, None)
            elif item.version is not None:
                rebuilt[where] = item.version
    if complete and rebuilt != final:
        wrong = sorted(k for k in set(rebuilt) | set(final) if rebuilt.get(k) != final.get(k))
        report.violate(
            f"snapshot reads and the stream do not rebuild the tables: {len(wrong)} rows differ, e.g. "
            + ", ".join(f"{t} id {k}: {rebuilt.get((t, k))} vs {final.get((t, k))}" for t, k in wrong[:5])
        )
