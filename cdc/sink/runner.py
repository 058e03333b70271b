"""The consume loop of a sink: change topics in, a handler applying them, positions out, exactly once.

A `Sink` reads its topics (every partition, or its share in a consumer
group), hands each change to a handler inside a transaction of the target
database, and commits that transaction together with the position reached
in every partition (`cdc.sink.postgres.Target.commit`). Why a change is
applied once and in order, whatever fails:

- On start (and when a group gives this process partitions) each partition
  is read from the stored offset + 1: what committed is never read again,
  what did not commit is read again and applied then.
- The connector's at-least-once repeats (after its own crash) come at new
  offsets but carry their old position ``(commit_lsn, total_order)``: per
  partition, a change at or below the highest position read is dropped (a
  snapshot read, which shares its position with the other reads of its
  snapshot, only when below it). A key's changes are all in one partition,
  in commit order, so this is exact for every key.
- With ``--transaction-metadata`` the changes of a source transaction are
  held until the END record on ``PREFIX.transaction`` counts all of them
  (per table this process holds), then applied in commit order, each
  transaction whole inside one target transaction; a transaction too large
  to hold is streamed into an open target transaction that commits only at
  its end. Partitions that are past the oldest open transaction pause while
  too much waits, so memory stays bounded. In a group each process holds
  whole topics (`cdc.kafka` deals them out), so it can count.
- The target transaction stays within ``--batch-rows`` / ``--batch-mb``
  (a larger source transaction stays whole) and commits at most
  ``--batch-linger-ms`` after its first change.
- ``--until`` stops at a point: changes after it are not applied, and the
  sink ends once every partition is past it or read to its end and the
  topics show that the connector passed it.

Failures: a lost target or broker ends the session, which starts again (after
a backoff) from the stored positions; so does a position moved by another
process of the group (`Fenced`). At start-up they are reported instead.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import psycopg

from cdc import avro, pg
from cdc.consume import ChangeConsumer
from cdc.errors import SchemaError, SinkError, SourceUnavailable
from cdc.kafka import Message, Partition, client_config
from cdc.kafka.clientconfig import kafka_python_consumer_settings
from cdc.sink.apply import Change, Position, Shape, change_from_record, shape_from_schemas
from cdc.sink.postgres import RETRIABLE, Fenced, Stored, TableApplier, Target
from cdc.sink.settings import SinkSettings, Until, parse_until

log = logging.getLogger(__name__)

_TOPIC_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")
#: Reading the transaction topic again after a restart starts this long before the oldest position.
_TXN_REWIND_MS: Final = 60_000
_PROGRESS_EVERY: Final = 10.0
_LOOK_FOR_TOPICS_EVERY: Final = 2.0
_NOWHERE: Final[Position] = (-1, -1)
_FIX: Final = "check the handler and the target"
#: Transactions applied in this session, remembered to recognize a late repeat of one.
_DONE_REMEMBERED: Final = 100_000


class Handler(Protocol):
    """Applies one change inside the target's open transaction (`cdc.sink.Sink` commits it).

    ``db`` is the target connection (psycopg, not in autocommit): write with it,
    never commit. A handler may also have ``pipeline = True`` (its statements
    need no answers) and ``open(target)`` (called with each new connection: a
    `cdc.sink.Target`, whose ``queue`` sends statements in batches).
    """

    def __call__(self, db: psycopg.Connection[Any], change: Change, /) -> None: ...


@dataclass(slots=True)
class SinkStats:
    """What a sink did, for its log lines and whoever runs it."""

    applied: int = 0  # changes handed to the handler and committed
    transactions: int = 0  # source transactions applied whole (--transaction-metadata)
    repeats: int = 0  # changes dropped as repeats of what was applied or read
    commits: int = 0  # target transactions
    sessions: int = 0
    per_topic: Counter[str] = field(default_factory=Counter)
    last_commit_ts_ms: int = 0  # source commit time of the last change applied
    caught_up: bool = False  # the last poll found nothing new, and everything read is committed
    reached_until: bool = False

    def lag_seconds(self) -> float | None:
        """How far behind the source the target is: 0 when caught up, else now minus the commit time of
        the last change applied (None before the first). A quiet source is not a lagging sink."""
        if self.caught_up:
            return 0.0
        return None if not self.last_commit_ts_ms else max(0.0, time.time() - self.last_commit_ts_ms / 1000)


# -- the pieces of a session's state ------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Item:
    """What is applied whole: a source transaction, or one change outside any."""

    position: Position
    transaction_id: str | None
    changes: list[Change] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # topic -> changes read
    expected: dict[str, int] | None = None  # topic -> changes END counts for the topics held
    applied: int = 0  # changes handed to the handler (all of them once done)
    done: bool = False
    size: int = 0
    since: float = field(default_factory=time.monotonic)
    warned: bool = False

    @property
    def complete(self) -> bool:
        if self.transaction_id is None:
            return True
        expected = self.expected
        return expected is not None and all(self.counts[topic] >= n for topic, n in expected.items())


@dataclass(slots=True)
class _Entry:
    """One record read from a partition, until it is applied (or known to need nothing)."""

    offset: int
    position: Position | None
    record_ts: int
    commit_ts_ms: int
    item: _Item | None  # None: nothing to apply (a tombstone, a repeat)


@dataclass(slots=True)
class _Part:
    """A partition this process holds."""

    stored: Stored | None  # the position the target holds (what `commit` expects to replace)
    seen: Position  # the highest position read: changes at or below it are repeats
    done: Stored | None  # the position to store at the next commit
    entries: deque[_Entry] = field(default_factory=deque)
    beyond: bool = False  # --until: it showed a change after the point


def topic_of(prefix: str, data_collection: str) -> str:
    """The topic the connector writes a ``schema.table`` of a transaction's END to."""
    return _TOPIC_UNSAFE.sub("_", f"{prefix}.{data_collection}")[:249]


def _commit_lsn_of(transaction_id: str) -> int:
    """``"xid:commit_lsn"`` -> commit_lsn."""
    return int(transaction_id.rpartition(":")[2] or 0)


class _Session:
    """One connection to the target and the brokers; thrown away on any failure."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        settings = self.settings = sink.settings
        self.handler = sink.handler
        self.until: Until | None = sink.until
        self.stats = sink.stats
        self.pipeline = bool(getattr(self.handler, "pipeline", False))
        self.batch_bytes = int(settings.batch_mb * 1024 * 1024)
        self.parts: dict[Partition, _Part] = {}
        self.items: dict[str, _Item] = {}
        self.done_ids: dict[str, None] = {}  # transactions applied, oldest first
        self.failure: BaseException | None = None  # raised in a rebalance callback, re-raised after poll
        self.warned_no_transactions = False
        self.heaps: dict[str, list[tuple[Position, int, _Item]]] = {}
        self.sequence = itertools.count()
        self.partial: _Item | None = None  # a transaction streamed into the open target transaction
        self.open_rows = 0
        self.open_bytes = 0
        self.open_since = 0.0
        self.open_changes: Counter[str] = Counter()
        self.open_transactions = 0
        self.open_last_ts = 0
        self.dirty: set[Partition] = set()
        self.buffered = 0  # bytes of changes read and not yet applied
        self.proof_at: float | None = None  # when a change after --until was first seen
        self.ends_checked = 0.0
        self.looked_for_topics = time.monotonic()
        self.shapes: dict[tuple[bytes, bytes], Shape] = {}
        self.txn: ChangeConsumer | None = None
        self.prefix_of: dict[str, str | None] = {}
        self.target = Target(settings.dsn, settings.positions_table, settings.positions_key)
        try:
            self.target.prepare()
            opener = getattr(self.handler, "open", None)
            if callable(opener):
                opener(self.target)
            client = client_config(settings)
            consumer_config = kafka_python_consumer_settings(settings.consumer_config)
            group = settings.group or None
            self.prefixes = _prefixes(settings)
            self.consumer = ChangeConsumer(
                settings.topics,
                client,
                topic_prefix=self.prefixes[0] if len(self.prefixes) == 1 else None,
                from_beginning=True,
                group=group,
                consumer_config=consumer_config,
                isolation=settings.isolation,
                rebalance=self if group else None,
                whole_topics=settings.transaction_metadata,
                missing_ok=True,
                plain_text=True,
            )
            if settings.transaction_metadata:
                self.txn = ChangeConsumer(
                    [f"{p}.transaction" for p in self.prefixes],
                    client,
                    topic_prefix=self.prefixes[0] if len(self.prefixes) == 1 else None,
                    from_beginning=True,
                    consumer_config=consumer_config,
                    isolation=settings.isolation,
                    missing_ok=True,
                )
                self.prefix_of = {t: _prefix_of(t, self.prefixes) for t in settings.topics}
            if group is None:
                self._assigned(self.consumer.reader.assignment())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for consumer in (getattr(self, "consumer", None), self.txn):
            if consumer is not None:
                with contextlib.suppress(Exception):
                    consumer.close()
        self.target.rollback()
        self.target.close()

    # -- partitions come and go -----------------------------------------------------------------

    def revoked(self, partitions: list[Partition]) -> None:
        """Before a rebalance: commit what is whole, forget everything read (the next owner reads it).

        Called inside kafka-python's poll, which would only log an exception: it is kept for `run`.
        """
        try:
            self._revoked(partitions)
        except BaseException as exc:
            self.failure = exc

    def _revoked(self, partitions: list[Partition]) -> None:
        try:
            if self.partial is None:
                self.commit()
        except (Fenced, SourceUnavailable) as exc:
            log.warning("%s", exc)
        finally:
            self.target.rollback()
            self._forget()
        log.info("partitions revoked: %s", _names(partitions))

    def assigned(self, partitions: list[Partition]) -> None:
        """Read each partition from its stored offset + 1 (its beginning without one)."""
        try:
            self._assigned(partitions)
        except BaseException as exc:
            self.failure = exc

    def _assigned(self, partitions: list[Partition]) -> None:
        self._forget()
        stored = self.target.load_positions(partitions)
        for partition in partitions:
            known = stored.get(partition)
            self.parts[partition] = _Part(known, known.position if known else _NOWHERE, known)
        self.consumer.reader.seek({p: (s.offset + 1 if (s := stored.get(p)) else None) for p in partitions})
        if partitions:
            resumed = sum(1 for p in partitions if p in stored)
            log.info(
                "reading %s partitions (%s from their stored positions, group %s)",
                len(partitions), resumed, self.settings.positions_key,
            )  # fmt: skip
        if self.txn is not None:
            self._seek_transactions(stored if len(stored) == len(partitions) else None)

    def _look_for_topics(self) -> None:
        """Topics that did not exist yet (a table's first change creates its topic): read them too.

        With transaction metadata everything is read again from the stored positions, so that the
        transactions whose END came before the new topic count its changes as well.
        """
        if self.txn is not None and len(self.txn.reader.assignment()) < len(self.txn.topics):
            if self.txn.reader.new_partitions():
                log.info("reading the transaction topics %s", ", ".join(self.txn.topics))
            elif time.monotonic() - self.sink.started_at > 30 and not self.warned_no_transactions:
                self.warned_no_transactions = True
                log.warning(
                    "%s does not exist yet: is the connector running with --transaction-metadata?",
                    ", ".join(self.txn.topics),
                )
        if self.settings.group or {p.topic for p in self.parts} >= set(self.settings.topics):
            return
        new = self.consumer.reader.new_partitions()
        if not new:
            return
        log.info("new topics: %s", _names(new))
        if self.partial is None:
            self.commit()
        self.target.rollback()
        self._assigned(self.consumer.reader.assignment())

    def _seek_transactions(self, stored: dict[Partition, Stored] | None) -> None:
        """Read the transaction topics from a little before the oldest stored position (by the Kafka
        record time, which the connector set for both), or from their beginning."""
        assert self.txn is not None
        reader = self.txn.reader
        partitions = reader.assignment()
        if not partitions:
            return
        times = [s.record_ts for s in stored.values()] if stored else []
        if not times or min(times) < 0:
            reader.seek(dict.fromkeys(partitions))
            return
        since = min(times) - _TXN_REWIND_MS
        try:
            found = reader.offsets_for_times(dict.fromkeys(partitions, since))
            ends = reader.end_offsets(partitions)
        except SinkError as exc:  # a broker without timestamp lookups: read them all
            log.debug("no offsets by time (%s): reading the transaction topics from the beginning", exc)
            reader.seek(dict.fromkeys(partitions))
            return
        reader.seek({p: found[p] if found.get(p) is not None else ends[p] for p in partitions})

    def _forget(self) -> None:
        if self.parts:
            with contextlib.suppress(Exception):
                self.consumer.reader.resume(self.parts)
        self.parts.clear()
        self.items.clear()
        self.done_ids.clear()
        self.heaps.clear()
        self.partial = None
        self.dirty.clear()
        self.buffered = 0
        self._reset_open()

    def _reset_open(self) -> None:
        self.open_rows = self.open_bytes = self.open_transactions = 0
        self.open_since = 0.0
        self.open_changes.clear()
        self.open_last_ts = 0

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> bool:
        """Until stopped (False) or past --until (True)."""
        stop = self.sink.stop_event
        last_progress = time.monotonic()
        reported = self.stats.applied
        while not stop.is_set():
            waiting = self.open_rows > 0 or any(self.heaps.values())
            messages = self.consumer.reader.poll(0.1 if waiting else 0.5, self.settings.batch_rows)
            if self.failure is not None:
                raise self.failure
            for message in messages:
                self._take(message)
            if self.txn is not None:
                for message in self.txn.reader.poll(0.0 if messages else 0.05, 5000):
                    self._end(message)
            self._apply_ready()
            self._maybe_commit(idle=not messages)
            self.stats.caught_up = not messages and not self.open_rows and not self.items
            if self.until is not None and not messages and self._past_until():
                self.commit()
                self.stats.reached_until = True
                return True
            now = time.monotonic()
            if now - self.looked_for_topics >= _LOOK_FOR_TOPICS_EVERY:
                self.looked_for_topics = now
                self._look_for_topics()
            if now - last_progress >= _PROGRESS_EVERY:
                self._progress(self.stats.applied - reported, now - last_progress)
                last_progress, reported = now, self.stats.applied
        if self.partial is None:
            self.commit()
        return False

    def _progress(self, applied: int, seconds: float) -> None:
        lag = self.stats.lag_seconds()
        log.info(
            "applied %s changes in %.0f s (%s in all, %s repeats dropped)%s%s",
            applied, seconds, self.stats.applied, self.stats.repeats,
            f", {lag:.1f} s behind the source" if lag is not None else "",
            f", {len(self.items)} transactions waiting" if self.items else "",
        )  # fmt: skip
        for heap in self.heaps.values():
            if heap and not heap[0][2].complete and not heap[0][2].warned:
                item = heap[0][2]
                if time.monotonic() - item.since > 30:
                    item.warned = True
                    log.warning(
                        "transaction %s waits for %s: END %s, changes read %s",
                        item.transaction_id, "its END record" if item.expected is None else "its changes",
                        item.expected, dict(item.counts),
                    )  # fmt: skip

    # -- records in -----------------------------------------------------------------------------

    def _shape(self, change: Change, message: Message) -> Shape | None:
        value = message.value
        if value is None or value[:2] != avro.MAGIC or change.table is None:
            return None
        key = message.key if message.key is not None and message.key[:2] == avro.MAGIC else b""
        fingerprints = (bytes(key[2:10]), bytes(value[2:10]))
        shape = self.shapes.get(fingerprints)
        if shape is None:
            decoder = self.consumer.decoder
            value_schema = decoder.writer_schema(value)
            assert value_schema is not None
            key_schema = decoder.writer_schema(key) if key else None
            shape = self.shapes[fingerprints] = shape_from_schemas(change.table, key_schema, value_schema)
        return shape

    def _take(self, message: Message) -> None:
        partition = Partition(message.topic, message.partition)
        part = self.parts.get(partition)
        if part is None:
            return  # a record of a partition taken away in this poll's rebalance
        if message.value is None:  # a tombstone: the delete before it did the work
            part.entries.append(_Entry(message.offset, None, message.timestamp, 0, None))
            self._advance(part, partition)
            return
        record = self.consumer.decode(message)
        if record.error is not None:
            raise SchemaError(f"cannot apply {record.error}")
        size = len(message.value) + len(message.key or b"")
        change = change_from_record(record, None, size)
        if change is None:
            return
        change.shape = self._shape(change, message)
        position = change.position
        if position is not None:
            if self.until is not None and self.until.passed(change.commit_lsn, change.commit_ts_ms):
                self._beyond(partition, part)
                return
            # a snapshot read shares its position with the other reads of its snapshot
            shared = change.total_order == 0 and change.op == "r"
            if position < part.seen or (position == part.seen and not shared):
                self.stats.repeats += 1
                part.entries.append(_Entry(message.offset, None, message.timestamp, 0, None))
                self._advance(part, partition)
                return
            part.seen = position
        prefix = self.prefix_of.get(message.topic)
        if self.txn is None or position is None or prefix is None:
            item = _Item(position or _NOWHERE, None, [change], size=size)
            part.entries.append(
                _Entry(message.offset, position, message.timestamp, change.commit_ts_ms, item)
            )
            self._apply(item)
            self._advance(part, partition)
            self._maybe_commit()
            return
        if change.transaction_id is None:
            item = _Item(position, None, [change], size=size)
            heapq.heappush(self.heaps.setdefault(prefix, []), (position, next(self.sequence), item))
        elif change.transaction_id in self.done_ids:  # a repeat in another partition (a keyless table's)
            self.stats.repeats += 1
            part.entries.append(_Entry(message.offset, None, message.timestamp, 0, None))
            self._advance(part, partition)
            return
        else:
            item = self.items.get(change.transaction_id) or self._new_transaction(
                prefix, change.transaction_id
            )
            item.changes.append(change)
            item.counts[message.topic] += 1
            item.size += size
        self.buffered += size
        part.entries.append(_Entry(message.offset, position, message.timestamp, change.commit_ts_ms, item))
        if item is self.partial:
            self._apply(item)

    def _new_transaction(self, prefix: str, transaction_id: str) -> _Item:
        item = self.items[transaction_id] = _Item((_commit_lsn_of(transaction_id), 0), transaction_id)
        heapq.heappush(self.heaps.setdefault(prefix, []), (item.position, next(self.sequence), item))
        return item

    def _beyond(self, partition: Partition, part: _Part) -> None:
        """A change after --until: nothing more of this partition is applied in this run."""
        if not part.beyond:
            part.beyond = True
            self.consumer.reader.pause([partition])
        if self.proof_at is None:
            self.proof_at = time.monotonic()
            log.info("the topics passed --until %s", self.until)

    def _end(self, message: Message) -> None:
        """A record of PREFIX.transaction: END says how many changes per table its transaction has."""
        if message.value is None:
            return
        record = self.txn.decode(message) if self.txn is not None else None
        value = record.value if record is not None else None
        if not isinstance(value, dict) or value.get("status") != "END" or not value.get("id"):
            return
        transaction_id = str(value["id"])
        if transaction_id in self.done_ids:
            return
        commit_lsn = _commit_lsn_of(transaction_id)
        if self.until is not None and self.until.passed(commit_lsn, int(value.get("ts_ms") or 0)):
            if self.proof_at is None:
                self.proof_at = time.monotonic()
            return
        prefix = message.topic.removesuffix(".transaction")
        held = {p.topic for p in self.parts}
        expected: dict[str, int] = {}
        unheld = False
        for collection in value.get("data_collections") or ():
            topic = topic_of(prefix, str(collection["data_collection"]))
            if topic in held:
                if self._done_position(topic) < (commit_lsn, 0):
                    expected[topic] = expected.get(topic, 0) + int(collection["event_count"])
            elif not self.settings.group and topic in self.prefix_of:
                unheld = True
        item = self.items.get(transaction_id)
        if unheld:
            # a topic this process reads but does not hold yet (made by its table's first change a
            # moment ago): counted without it, the transaction would be applied in two parts. It
            # waits, with everything after it; the topic is looked for now, and once it is held
            # everything is read again from the stored positions, this END included.
            self.looked_for_topics = 0.0
            if item is None:
                self._new_transaction(prefix, transaction_id)
            return
        if item is None:
            if not expected:
                return  # nothing of it for this process, or applied already
            item = self._new_transaction(prefix, transaction_id)
        if item.expected is None:
            item.expected = expected

    def _remember_done(self, transaction_id: str) -> None:
        done = self.done_ids
        done[transaction_id] = None
        if len(done) > _DONE_REMEMBERED:
            del done[next(iter(done))]

    def _done_position(self, topic: str) -> Position:
        """The highest position applied (or stored) in the partitions of ``topic``."""
        best = _NOWHERE
        for partition, part in self.parts.items():
            if partition.topic == topic and part.done is not None and part.done.position > best:
                best = part.done.position
        return best

    # -- applying -------------------------------------------------------------------------------

    def _apply(self, item: _Item) -> None:
        """Hand the item's changes not applied yet to the handler, in the open target transaction."""
        if self.open_rows == 0 and not self.open_since:
            self.target.begin(self.pipeline)
            self.open_since = time.monotonic()
        db = self.target.conn
        for change in item.changes[item.applied :]:
            with pg.errors("applying a change to the target", _FIX, RETRIABLE):
                self.handler(db, change)
            self.open_rows += 1
            self.open_bytes += change.size
            self.open_changes[change.topic] += 1
            if change.commit_ts_ms:
                self.open_last_ts = max(self.open_last_ts, change.commit_ts_ms)
        item.applied = len(item.changes)
        if item.complete:
            if item.transaction_id is not None:
                if self.items.pop(item.transaction_id, None) is not None:
                    self.open_transactions += 1
                    self._remember_done(item.transaction_id)
                self.buffered -= item.size
            item.done = True
            if item is self.partial:
                self.partial = None

    def _apply_ready(self) -> None:
        """Apply, in commit order, every transaction that is whole; stream a head too large to hold."""
        for heap in self.heaps.values():
            while heap:
                item = heap[0][2]
                if item.done:
                    heapq.heappop(heap)
                    continue
                if not item.complete:
                    self._spill(item)
                    break
                heapq.heappop(heap)
                if item.transaction_id is None:
                    self.buffered -= item.size
                self._apply(item)
                if self._full():
                    self.commit()
        for partition, part in self.parts.items():
            self._advance(part, partition)
        self._bound_memory()

    def _spill(self, item: _Item) -> None:
        """A transaction too large to hold goes into a target transaction of its own as it comes."""
        if self.partial is item:
            return
        if item.size < self.batch_bytes and len(item.changes) < self.settings.batch_rows:
            return
        if self.partial is None:
            self.commit()  # what is whole commits first: the open transaction then holds only this one
            self.partial = item
            log.info(
                "transaction %s is large (%s changes so far): applied as it comes, committed at its end",
                item.transaction_id, len(item.changes),
            )  # fmt: skip
            self._apply(item)

    def _bound_memory(self) -> None:
        """Pause the partitions past the oldest waiting transaction while too much waits."""
        reader = self.consumer.reader
        if self.buffered > 2 * self.batch_bytes:
            heads = [h[0][0] for h in self.heaps.values() if h]
            if not heads:
                return
            head = min(heads)
            ahead = [p for p, part in self.parts.items() if part.seen > head and not part.beyond]
            paused = reader.paused()
            fresh = [p for p in ahead if p not in paused]
            if fresh:
                reader.pause(fresh)
        elif self.buffered < self.batch_bytes:
            resumable = [p for p in reader.paused() if p in self.parts and not self.parts[p].beyond]
            if resumable:
                reader.resume(resumable)

    def _advance(self, part: _Part, partition: Partition) -> None:
        """Move the partition's position past every record that is applied or needs nothing."""
        entries = part.entries
        done = part.done
        moved = False
        while entries and (entries[0].item is None or entries[0].item.done):
            entry = entries.popleft()
            previous = done.position if done is not None else _NOWHERE
            position = (
                entry.position if entry.position is not None and entry.position > previous else previous
            )
            commit_ts = entry.commit_ts_ms or (done.commit_ts_ms if done is not None else 0)
            done = Stored(entry.offset, position, entry.record_ts, commit_ts)
            moved = True
        if moved:
            part.done = done
            self.dirty.add(partition)

    # -- committing -----------------------------------------------------------------------------

    def _full(self) -> bool:
        return self.open_rows >= self.settings.batch_rows or self.open_bytes >= self.batch_bytes

    def _maybe_commit(self, idle: bool = False) -> None:
        if self.partial is not None:
            return
        lingered = (
            self.open_since and time.monotonic() - self.open_since >= self.settings.batch_linger_ms / 1000
        )
        # with repeats only, their positions: so that they are not read again
        if (self.open_rows and (self._full() or idle)) or lingered or (idle and self.dirty):
            self.commit()

    def commit(self) -> None:
        """Commit the open target transaction with the position of every partition that moved."""
        if self.partial is not None:
            raise AssertionError("commit inside a transaction that is not whole")
        for partition, part in self.parts.items():
            self._advance(part, partition)
        moved: dict[Partition, tuple[Stored, int | None]] = {}
        for partition in self.dirty:
            held = self.parts.get(partition)
            if held is not None and held.done is not None:
                moved[partition] = (held.done, held.stored.offset if held.stored is not None else None)
        if not moved and not self.open_rows:
            return
        self.target.commit(moved)
        for partition, (done, _) in moved.items():
            self.parts[partition].stored = done
        self.dirty.clear()
        stats = self.stats
        stats.applied += self.open_rows
        stats.transactions += self.open_transactions
        stats.commits += 1
        stats.per_topic.update(self.open_changes)
        if self.open_last_ts:
            stats.last_commit_ts_ms = max(stats.last_commit_ts_ms, self.open_last_ts)
        self._reset_open()

    # -- --until --------------------------------------------------------------------------------

    def _past_until(self) -> bool:
        """Is every change up to --until applied? Every partition is past the point or read to its end,
        nothing up to it waits, and the topics showed a change after it a moment ago (the connector
        writes in commit order: what comes before it reaches Kafka first)."""
        if self.proof_at is None or time.monotonic() - self.proof_at < 1.0 or self.partial is not None:
            return False
        if self.items or any(heap for heap in self.heaps.values()):
            return False
        now = time.monotonic()
        if now - self.ends_checked < 0.5:
            return False
        self.ends_checked = now
        reader = self.consumer.reader
        open_parts = [p for p, part in self.parts.items() if not part.beyond]
        if not open_parts:
            return True
        ends = reader.end_offsets(open_parts)
        return all(reader.position(p) >= ends[p] and not self.parts[p].entries for p in open_parts)


# -- the sink ----------------------------------------------------------------------------------


class Sink:
    """Consumes change topics and applies them through a handler, exactly once in effect.

    ``handler`` is called with the target connection and each `Change`, inside a
    target transaction that the sink commits together with its positions;
    without one, changes are applied to tables (`cdc sink postgres`). A context
    manager; `run` returns when `stop` is called (from a signal handler or
    another thread) or, with ``until``, once the target is at that point.
    """

    def __init__(self, settings: SinkSettings, handler: Handler | Callable[..., None] | None = None) -> None:
        self.settings = settings
        self.handler: Handler = handler or TableApplier(
            settings.table_map, settings.unavailable_placeholder, settings.create_tables
        )
        self.until = parse_until(settings.until)
        self.stats = SinkStats()
        self.stop_event = threading.Event()
        self.started_at = time.monotonic()
        self.reconnect_max_seconds = 30.0

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """End `run` after the current step (what is whole is committed first)."""
        self.stop_event.set()

    def run(self) -> SinkStats:
        """Apply changes until stopped or past ``until``; sessions that fail start again.

        At start-up a target or broker that cannot be reached is an error (`SourceError`,
        `SinkError`); later it is waited for, with a backoff.
        """
        backoff = 0.5
        started = False
        while not self.stop_event.is_set():
            try:
                session = _Session(self)
            except (SourceUnavailable, SinkError, Fenced) as exc:
                if not started or (isinstance(exc, SinkError) and not exc.retriable):
                    raise
                log.warning("sink session failed to start: %s; retrying in %.1f s", exc, backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, self.reconnect_max_seconds)
                continue
            started = True
            self.stats.sessions += 1
            try:
                if session.run():
                    log.info("applied everything up to --until %s: stopping", self.until)
                    break
                backoff = 0.5
            except (SourceUnavailable, Fenced) as exc:
                log.warning("sink session ended: %s; starting over from the stored positions", exc)
            except SinkError as exc:
                if not exc.retriable:
                    raise
                log.warning("sink session ended: %s; starting over from the stored positions", exc)
            finally:
                session.close()
            if not self.stop_event.is_set():
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, self.reconnect_max_seconds)
        log.info(
            "sink stopped: %s changes applied (%s transactions whole), %s repeats dropped",
            self.stats.applied, self.stats.transactions, self.stats.repeats,
        )  # fmt: skip
        return self.stats


def _prefixes(settings: SinkSettings) -> list[str]:
    """The connectors' topic prefixes: --topic-prefix, or each topic's name without its schema.table."""
    if settings.topic_prefix:
        return [settings.topic_prefix]
    found: list[str] = []
    for topic in settings.topics:
        prefix = ".".join(topic.split(".")[:-2])
        if prefix and prefix not in found:
            found.append(prefix)
    return found


def _prefix_of(topic: str, prefixes: list[str]) -> str | None:
    """The (longest) prefix ``topic`` starts with; None: none of them (its changes apply one by one)."""
    matching = [p for p in prefixes if topic.startswith(p + ".")]
    return max(matching, key=len) if matching else None


def _names(partitions: list[Partition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "none"


def run(settings: SinkSettings, handler: Handler | Callable[..., None] | None = None) -> SinkStats:
    """Run a `Sink` until SIGTERM / Ctrl-C (or ``until``): for a service's main function."""
    from cdc import control  # noqa: PLC0415

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python logs every connection
    sink = Sink(settings, handler)
    stop_now = threading.Event()
    control.install_signal_handlers(sink.stop_event, stop_now)
    return sink.run()


__all__ = ["Handler", "Sink", "SinkStats", "run"]
