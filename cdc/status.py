"""What a running connector reports about itself: `cdc status`, and the metrics.

One `Status` per connector process. The stages update its fields (the
stream, the snapshots) and call `Status.report` when something worth
showing changed; where the report goes (``status.json``) is decided by
whoever made the `Status`, so the stages need nothing else of the connector.
`cdc.metrics` reads the same fields when Prometheus scrapes: the pipeline
keeps its figures once, here, and the hot path pays only for the few that
exist per row (`OpCount`).
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from cdc.lsn import format_lsn

#: Upper bounds (ms) of the commit-to-acknowledgement histogram's buckets; the last one is +Inf.
LATENCY_BUCKETS_MS: Final = (
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
)

#: The ops of a table's streamed events (insert, update, delete, truncate).
TABLE_OPS: Final = ("c", "u", "d", "t")


class OpCount:
    """Events of one table and op, and their encoded bytes: one per (table, op), bumped per event."""

    __slots__ = ("bytes", "events")

    def __init__(self) -> None:
        self.events = 0
        self.bytes = 0


class Latencies:
    """Commit-to-acknowledgement times (ms): the recent ones for percentiles, and a histogram.

    `cdc.checkpoint.Tracker` appends one sample per confirmed transaction.
    """

    __slots__ = ("buckets", "count", "recent", "sum")

    def __init__(self, keep: int = 4096) -> None:
        self.recent: deque[float] = deque(maxlen=keep)
        self.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)  # not cumulative; the last is +Inf
        self.sum = 0.0
        self.count = 0

    def append(self, ms: float) -> None:
        self.recent.append(ms)
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, ms)] += 1
        self.sum += ms
        self.count += 1

    def __iter__(self) -> Iterator[float]:
        return iter(self.recent)

    def __len__(self) -> int:
        return len(self.recent)


@dataclass(slots=True)
class Status:
    """The connector's live figures; updated by the pipeline, read by the status writer and metrics."""

    state: str = "starting"
    slot: str = ""
    received_lsn: int = 0
    confirmed_lsn: int = 0
    wal_end: int = 0
    events_total: int = 0
    #: events counted by the snapshots; the stream counts per (table, op) in `table_ops`, and
    #: `as_dict` adds both up
    events_per_table: Counter[str] = field(default_factory=Counter)
    table_ops: dict[tuple[str, str], OpCount] = field(default_factory=dict)
    records_per_topic: Counter[str] = field(default_factory=Counter)  # records this process produced
    transactions: int = 0
    sessions: int = 0
    reconnects: Counter[str] = field(default_factory=Counter)  # by cause: postgres, kafka, slot_lost
    delivery_errors: int = 0
    slot_recreations: int = 0  # a lost slot replaced and the tables read again: a gap closed
    last_error: str = ""
    started_at: float = field(default_factory=time.time)
    ended_at: float = 0.0  # wall clock when the connector stopped or failed
    first_event_at: float = 0.0  # wall clock of the first change read from the slot
    last_ack_at: float = 0.0  # wall clock of the latest acknowledgement from Kafka
    latencies: Latencies = field(default_factory=Latencies)
    snapshot: dict[str, Any] = field(default_factory=dict)  # progress of initial / incremental snapshots
    #: set once data flowed to Kafka (streaming began, or snapshot rows arrived): from then on a
    #: lost connection is retried; before, a server that is down is reported, not waited for
    progressed: bool = False
    # -- lag, updated every status interval while streaming
    behind_since: float = 0.0  # commit time (s) of the oldest transaction not confirmed yet; 0: none
    caught_up_at: float = 0.0  # wall clock of the last status interval with nothing unconfirmed
    producer_queue: tuple[int, int] = (0, 0)  # records and bytes the producer holds unacknowledged
    # -- the slot as the server sees it (cdc.slots.SlotMonitor)
    slot_wal_status: str = ""  # reserved | extended | unreserved | lost ('' before PG13 or unknown)
    slot_safe_wal_size: int | None = None  # bytes of WAL before the slot is lost; None: no limit
    last_heartbeat_at: float = 0.0  # wall clock of the last heartbeat (record or query)
    heartbeat_query_errors: int = 0
    # -- shaping (cdc.shaping)
    tables: list[str] = field(default_factory=list)  # the captured set, kept by the TableWatcher
    #: ``filtered`` (events transforms dropped), ``transform_errors:<transform>``,
    #: ``dead_letters:<stage>`` (transform, encode, kafka): the writer's Shaper counts into it
    shaping: Counter[str] = field(default_factory=Counter)
    # -- for the probes: when the process last reported, when the state last changed
    reported_at: float = field(default_factory=time.monotonic)
    state_since: float = field(default_factory=time.time)
    reported_state: str = "starting"
    publish: Callable[[Status], None] | None = field(default=None, repr=False, compare=False)

    def report(self) -> None:
        """Hand the current figures to whoever shows them (the status file)."""
        self.reported_at = time.monotonic()
        if self.state != self.reported_state:
            self.reported_state = self.state
            self.state_since = time.time()
        if self.publish is not None:
            self.publish(self)

    def queued(self, records: int, size: int | None) -> tuple[int, int]:
        """``producer_queue`` from the producer's backlog: a size it does not count (librdkafka's)
        is estimated as ``records`` times the mean encoded size of the events streamed so far."""
        if size is None:
            size = 0
            if records:
                events = sum(count.events for count in self.table_ops.values())
                if events:
                    size = records * sum(count.bytes for count in self.table_ops.values()) // events
        return records, size

    def op_counts(self, table: str) -> dict[str, OpCount]:
        """The counters of ``table``'s events by op, made once and kept across sessions."""
        counts = {}
        for op in TABLE_OPS:
            count = self.table_ops.get((table, op))
            if count is None:
                count = self.table_ops[(table, op)] = OpCount()
            counts[op] = count
        return counts

    def per_table(self) -> Counter[str]:
        """Events per table: the stream's and the snapshots'."""
        totals = Counter(self.events_per_table)
        for (table, _), count in self.table_ops.items():
            if count.events:
                totals[table] += count.events
        return totals

    def lag_seconds(self, now: float | None = None) -> float:
        """How far behind the database the connector is, in seconds of commit time.

        Streaming: the age of the oldest transaction Kafka does not hold yet (0
        when every transaction read is confirmed). Not streaming (reconnecting,
        snapshotting, stopping): the time since the connector last knew itself
        caught up, or since the oldest unconfirmed commit, whichever is older.
        """
        now = time.time() if now is None else now
        if self.state == "running":
            return max(0.0, now - self.behind_since) if self.behind_since else 0.0
        known = [t for t in (self.behind_since, self.caught_up_at) if t]
        return max(0.0, now - min(known)) if known else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "slot": self.slot,
            "received_lsn": format_lsn(self.received_lsn),
            "confirmed_lsn": format_lsn(self.confirmed_lsn),
            "lag_bytes": max(0, self.wal_end - self.confirmed_lsn),
            "lag_seconds": round(self.lag_seconds(), 3),
            "events_total": self.events_total,
            "events_per_table": dict(self.per_table()),
            "transactions": self.transactions,
            "sessions": self.sessions,
            "reconnects": dict(self.reconnects),
            "slot_recreations": self.slot_recreations,
            "slot_wal_status": self.slot_wal_status or None,
            "slot_safe_wal_size": self.slot_safe_wal_size,
            "last_error": self.last_error,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "first_event_at": self.first_event_at,
            "last_ack_at": self.last_ack_at,
            "latency_ms": percentiles(self.latencies),
            "producer_queue": {"records": self.producer_queue[0], "bytes": self.producer_queue[1]},
            "snapshot": self.snapshot,
            "tables": self.tables,
            "shaping": dict(self.shaping),
        }


#: States of a connector process that is (or was, when it died unannounced) alive.
LIVE_STATES = frozenset({"starting", "snapshotting", "running", "reconnecting", "stopping"})


def percentiles(samples: Latencies | deque[float]) -> dict[str, float | int]:
    """p50/p99 commit-to-acknowledgement over the recent transactions."""
    ordered = sorted(samples)
    if not ordered:
        return {"samples": 0}
    return {
        "p50": round(ordered[len(ordered) // 2], 1),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "samples": len(ordered),
    }
