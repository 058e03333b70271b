"""``snapshot.json``: what the connector knows about the snapshots of its slot.

Versioned and written atomically like ``offsets.json``: the slot, system and
database it belongs to, the consistent point, the phase, the plan of the
initial snapshot per table (chunk bounds, chunks Kafka holds) and the queue
of incremental snapshots (the last key Kafka holds per table).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson

from cdc.checkpoint import read_state, write_atomic
from cdc.errors import CheckpointError
from cdc.lsn import format_lsn, parse_lsn

STATE_VERSION: Final = 1


@dataclass(slots=True)
class TablePlan:
    """The initial snapshot of one table: chunk bounds and which chunks Kafka holds."""

    bounds: list[list[str]]  # upper key bound of chunk i (text values); the last chunk has none
    done: set[int] = field(default_factory=set)
    rows: int = 0  # rows of the done chunks
    estimate: int = 0
    #: why the snapshot could not read the table to its end ("rewritten", "dropped"): it is over,
    #: and an incremental snapshot reads a rewritten table again while streaming
    gave_up: str = ""

    @property
    def chunks(self) -> int:
        return len(self.bounds) + 1

    def first_pending(self) -> int:
        return next(i for i in range(self.chunks + 1) if i not in self.done)

    def complete(self) -> bool:
        return bool(self.gave_up) or len(self.done) >= self.chunks


@dataclass(slots=True)
class IncrementalTask:
    """One table to re-read while streaming; ``last_key`` is the last key Kafka holds."""

    table: str
    last_key: list[str] | None = None
    rows: int = 0
    requested_at: float = field(default_factory=time.time)
    #: the topic holds rows the table no longer has (it was dropped and created again, or left the
    #: publication for a while): a truncate event goes first, in the first chunk's low watermark
    clear_first: bool = False


@dataclass(slots=True)
class SnapshotState:
    """``snapshot.json``: what the connector knows about snapshots of its slot."""

    slot: str = ""
    system_id: str = ""
    database: str = ""
    consistent_lsn: int = 0
    phase: str = ""  # running | complete | skipped (--snapshot never) | abandoned
    tables: list[str] = field(default_factory=list)  # --tables at the last start ([]: all)
    plans: dict[str, TablePlan] = field(default_factory=dict)
    incremental: list[IncrementalTask] = field(default_factory=list)
    started_at: float = 0.0
    completed_at: float = 0.0

    def belongs_to(self, slot: str, system_id: str, database: str) -> bool:
        return (self.slot, self.system_id, self.database) == (slot, system_id, database)


class SnapshotStore:
    """``snapshot.json`` in the connector's directory; written atomically, versioned."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "snapshot.json"

    def load(self) -> SnapshotState:
        data = read_state(self.path, STATE_VERSION, "fix it, or delete it to forget snapshot progress")
        if data is None:
            return SnapshotState()
        try:
            return SnapshotState(
                slot=str(data["slot"]),
                system_id=str(data["system_id"]),
                database=str(data["database"]),
                consistent_lsn=parse_lsn(data["consistent_lsn"]),
                phase=str(data["phase"]),
                tables=[str(t) for t in data.get("tables", [])],
                plans={
                    name: TablePlan(
                        [[str(v) for v in bound] for bound in plan["bounds"]],
                        {int(i) for i in plan["done"]},
                        int(plan["rows"]),
                        int(plan.get("estimate", 0)),
                        str(plan.get("gave_up", "")),
                    )
                    for name, plan in data.get("plans", {}).items()
                },
                incremental=[
                    IncrementalTask(
                        str(task["table"]),
                        None if task.get("last_key") is None else [str(v) for v in task["last_key"]],
                        int(task.get("rows", 0)),
                        float(task.get("requested_at", 0.0)),
                        bool(task.get("clear_first", False)),
                    )
                    for task in data.get("incremental", [])
                ],
                started_at=float(data.get("started_at", 0.0)),
                completed_at=float(data.get("completed_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.path} is malformed ({exc}); fix or delete it") from None

    def save(self, state: SnapshotState) -> None:
        payload = {
            "version": STATE_VERSION,
            "slot": state.slot,
            "system_id": state.system_id,
            "database": state.database,
            "consistent_lsn": format_lsn(state.consistent_lsn),
            "phase": state.phase,
            "tables": state.tables,
            "plans": {
                name: {
                    "bounds": plan.bounds,
                    "done": sorted(plan.done),
                    "rows": plan.rows,
                    "estimate": plan.estimate,
                    "gave_up": plan.gave_up,
                }
                for name, plan in state.plans.items()
            },
            "incremental": [
                {
                    "table": task.table,
                    "last_key": task.last_key,
                    "rows": task.rows,
                    "requested_at": task.requested_at,
                    "clear_first": task.clear_first,
                }
                for task in state.incremental
            ],
            "started_at": state.started_at,
            "completed_at": state.completed_at,
            "updated_at": time.time(),
        }
        write_atomic(self.path, orjson.dumps(payload, option=orjson.OPT_INDENT_2))
