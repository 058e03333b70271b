"""What a running connector reports about itself: `cdc status`, and soon metrics.

One `Status` per connector process. The stages update its fields (the
stream, the snapshots) and call `Status.report` when something worth
showing changed; where the report goes (``status.json``) is decided by
whoever made the `Status`, so the stages need nothing else of the connector.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdc.lsn import format_lsn


@dataclass(slots=True)
class Status:
    """The connector's live figures; updated by the pipeline, read by the status writer."""

    state: str = "starting"
    slot: str = ""
    received_lsn: int = 0
    confirmed_lsn: int = 0
    wal_end: int = 0
    events_total: int = 0
    events_per_table: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    last_error: str = ""
    started_at: float = field(default_factory=time.time)
    ended_at: float = 0.0  # wall clock when the connector stopped or failed
    first_event_at: float = 0.0  # wall clock of the first change read from the slot
    last_ack_at: float = 0.0  # wall clock of the latest acknowledgement from Kafka
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    snapshot: dict[str, Any] = field(default_factory=dict)  # progress of initial / incremental snapshots
    #: set once data flowed to Kafka (streaming began, or snapshot rows arrived): from then on a
    #: lost connection is retried; before, a server that is down is reported, not waited for
    progressed: bool = False
    publish: Callable[[Status], None] | None = field(default=None, repr=False, compare=False)

    def report(self) -> None:
        """Hand the current figures to whoever shows them (the status file)."""
        if self.publish is not None:
            self.publish(self)

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "slot": self.slot,
            "received_lsn": format_lsn(self.received_lsn),
            "confirmed_lsn": format_lsn(self.confirmed_lsn),
            "lag_bytes": max(0, self.wal_end - self.confirmed_lsn),
            "events_total": self.events_total,
            "events_per_table": dict(self.events_per_table),
            "sessions": self.sessions,
            "last_error": self.last_error,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "first_event_at": self.first_event_at,
            "last_ack_at": self.last_ack_at,
            "latency_ms": percentiles(self.latencies),
            "snapshot": self.snapshot,
        }


#: States of a connector process that is (or was, when it died unannounced) alive.
LIVE_STATES = frozenset({"starting", "snapshotting", "running", "reconnecting", "stopping"})


def percentiles(samples: deque[float]) -> dict[str, float | int]:
    """p50/p99 commit-to-acknowledgement over the recent transactions."""
    ordered = sorted(samples)
    if not ordered:
        return {"samples": 0}
    return {
        "p50": round(ordered[len(ordered) // 2], 1),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "samples": len(ordered),
    }
