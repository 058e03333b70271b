"""Which LSN is safe to confirm, and the durable copy of it in the state directory.

The invariant (DESIGN.md): the connector confirms the ``end_lsn`` of a
transaction only after Kafka acknowledged every event of it and of every
transaction before it. `Tracker` holds one entry per transaction in flight
(not one per event), in commit order; acknowledgements decrement the entry's
count, and `Tracker.safe_lsn` walks the finished prefix. Positions only move
forward. `OffsetStore` writes the position atomically (temp file, fsync,
rename) before it is ever sent to the server, so a crash can only confirm
less than was persisted, never more.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from cdc.errors import CheckpointError
from cdc.lsn import format_lsn, parse_lsn

STATE_VERSION = 1


class InFlight:
    """One transaction (or non-transactional message) whose events are not all acknowledged."""

    __slots__ = ("commit_lsn", "commit_ts_ms", "done_at", "end_lsn", "pending")

    def __init__(self, commit_lsn: int, commit_ts_ms: int = 0) -> None:
        self.commit_lsn = commit_lsn
        self.commit_ts_ms = commit_ts_ms
        self.end_lsn = 0  # set by Commit; 0 while the transaction is still arriving
        self.pending = 0
        self.done_at = 0.0  # wall clock when the last event was acknowledged after Commit


class Samples(Protocol):
    def append(self, ms: float, /) -> None: ...


class Tracker:
    """Transactions in flight, oldest first."""

    def __init__(self, confirmed: int = 0) -> None:
        self.entries: deque[InFlight] = deque()
        self.confirmed = confirmed
        #: commit-to-acknowledgement times (ms) of confirmed transactions (`cdc.status.Latencies`)
        self.latencies: Samples = deque(maxlen=4096)

    def begin(self, commit_lsn: int, commit_ts_ms: int = 0) -> InFlight:
        entry = InFlight(commit_lsn, commit_ts_ms)
        self.entries.append(entry)
        return entry

    @staticmethod
    def commit(entry: InFlight, end_lsn: int) -> None:
        entry.end_lsn = end_lsn
        if not entry.pending:
            entry.done_at = time.time()

    def safe_lsn(self) -> int:
        """The highest LSN that every acknowledged prefix of transactions allows."""
        entries = self.entries
        while entries and entries[0].end_lsn and not entries[0].pending:
            done = entries.popleft()
            self.confirmed = max(self.confirmed, done.end_lsn)
            if done.commit_ts_ms and done.done_at:
                self.latencies.append(done.done_at * 1000 - done.commit_ts_ms)
        return self.confirmed

    def oldest_commit_ms(self) -> int:
        """Commit time (ms) of the oldest transaction not confirmed yet; 0 when none is."""
        for entry in self.entries:
            if entry.commit_ts_ms:
                return entry.commit_ts_ms
        return 0

    def idle(self) -> bool:
        """Nothing in flight: no open transaction, no unacknowledged event."""
        self.safe_lsn()
        return not self.entries

    def advance_idle(self, wal_end: int) -> int:
        """With nothing in flight, the server's ``wal_end`` is safe (no WAL pinned when idle)."""
        if self.idle() and wal_end > self.confirmed:
            self.confirmed = wal_end
        return self.confirmed


@dataclass(slots=True)
class Offsets:
    """What the state directory remembers about a connector's position."""

    lsn: int = 0
    slot: str = ""
    system_id: str = ""
    database: str = ""
    timeline: int = 0  # the server's timeline when saved (0: unknown, written by an older cdc)


class OffsetStore:
    """``offsets.json`` in the connector's directory; written atomically, versioned."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "offsets.json"
        self.saved = Offsets()

    def load(self) -> Offsets:
        data = read_state(self.path, STATE_VERSION, "fix or delete it (the slot keeps the server's position)")
        if data is None:
            return Offsets()
        try:
            self.saved = Offsets(
                lsn=parse_lsn(data["lsn"]) if data.get("lsn") else 0,
                slot=str(data.get("slot", "")),
                system_id=str(data.get("system_id", "")),
                database=str(data.get("database", "")),
                timeline=int(data.get("timeline", 0)),
            )
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{self.path} is malformed ({exc}); fix or delete it") from None
        return self.saved

    def save(self, offsets: Offsets) -> None:
        """Persist ``offsets``; a position never moves backward once stored."""
        if offsets.lsn < self.saved.lsn and offsets.slot == self.saved.slot:
            offsets.lsn = self.saved.lsn
        payload = {
            "version": STATE_VERSION,
            "lsn": format_lsn(offsets.lsn),
            "slot": offsets.slot,
            "system_id": offsets.system_id,
            "database": offsets.database,
            "timeline": offsets.timeline,
            "updated_at": time.time(),
        }
        write_atomic(self.path, orjson.dumps(payload, option=orjson.OPT_INDENT_2))
        self.saved = Offsets(offsets.lsn, offsets.slot, offsets.system_id, offsets.database, offsets.timeline)

    def forget(self) -> None:
        """The stored position belongs to another history (a failover): let the next save go back."""
        self.saved = Offsets()


def read_state(path: Path, newest: int, fix: str) -> dict[str, Any] | None:
    """A JSON state file of the state directory (None when absent), refused when unreadable or when
    a newer cdc wrote it (its ``version`` above ``newest``); ``fix`` ends the unreadable error."""
    try:
        data: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}; {fix}") from None
    version = data.get("version", 1)
    if version > newest:
        raise CheckpointError(f"{path} was written by a newer cdc (state version {version}): upgrade cdc")
    return data


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CheckpointError(
            f"cannot write {path}: {exc.strerror or exc}; free space or fix permissions of {path.parent}"
        ) from None
