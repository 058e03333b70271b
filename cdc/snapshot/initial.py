"""The initial snapshot: every captured table read in the slot's exported snapshot, before streaming.

`before_streaming` runs between creating (or finding) the slot and
START_REPLICATION. A new slot exports the snapshot ``S0`` whose consistent
point ``C`` is where streaming starts; `InitialSnapshot` has worker processes
(`cdc.snapshot.workers`) read every table in ``S0`` with COPY, in key chunks,
and records in ``snapshot.json`` each chunk Kafka acknowledged. The slot is
confirmed only by the stream, which starts after the last chunk: it never
moves past ``C`` while a chunk is missing. After a stop or a crash the next
start reads only the chunks not recorded, from a new exported snapshot
(docs/architecture.md has why the tables still end exact).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

import psycopg

from cdc import pg
from cdc.checkpoint import InFlight
from cdc.config import Settings
from cdc.errors import CdcError, SinkError, SourceError
from cdc.events import SourceInfo, table_topic
from cdc.lsn import format_lsn
from cdc.pgtypes import TypeCatalog
from cdc.shaping.select import Selection
from cdc.snapshot.progress import SnapshotProgress
from cdc.snapshot.state import IncrementalTask, SnapshotState, SnapshotStore, TablePlan
from cdc.snapshot.tables import (
    TableSpec,
    captured_tables,
    chunk_bounds,
    describe_table,
    normalize_table,
    table_from_spec,
)
from cdc.snapshot.workers import DROPPED, ERRORS, Shared, WorkerJob, send, serve, worker_main
from cdc.status import Status
from cdc.writer import RecordWriter

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnProcess

log = logging.getLogger(__name__)

#: Seconds between writes of ``snapshot.json`` while chunks complete.
SAVE_INTERVAL = 0.5

#: Below this many rows (the planner's estimate) the workers are threads of the connector: a
#: spawned process takes a second or more to start and import, the time one core needs to read
#: ~100,000 rows; above it two cores pay.
THREADS_BELOW_ROWS = 100_000


class InitialSnapshot:
    """Coordinates the worker processes of the initial snapshot and records their progress."""

    def __init__(
        self,
        settings: Settings,
        status: Status,
        stop: threading.Event,
        writer: RecordWriter,
        source: SourceInfo,
        system_id: str,
        catalog: TypeCatalog,
        state: SnapshotState,
        store: SnapshotStore,
        specs: dict[str, TableSpec],
    ) -> None:
        self.settings = settings
        self.system_id = system_id
        #: exactly-once: each worker commits a chunk's rows with its done record, so no row is held
        #: back; the very last chunk is handed out once every other one is in Kafka, to carry "last"
        self.exactly_once = settings.delivery == "exactly-once"
        self.waiting: list[int] = []  # workers asking for a chunk
        self.busy: set[int] = set()  # workers reading one
        self.status = status
        self.stop = stop
        self.writer = writer
        self.source = source
        self.state = state
        self.store = store
        self.specs = specs
        self.tables = {name: table_from_spec(spec, catalog) for name, spec in specs.items()}
        self.held: tuple[str, int, int, list[Any]] | None = None  # (table, chunk, rows, the chunk's last row)
        self.unacked: deque[tuple[InFlight, str, int, int]] = deque()
        self.ts_ms = int(time.time() * 1000)
        self.progress: SnapshotProgress | None = None
        self.queue: deque[tuple[str, int]] = deque()  # chunks no worker took yet
        self.unsaved = False  # chunks done that snapshot.json does not say yet

    def run(self, exported: str | None) -> bool:
        """Read every pending chunk; True once the whole snapshot is in Kafka, False if stopped.

        ``exported``: the slot's exported snapshot, or None to read the rest of
        an interrupted snapshot from a new snapshot exported here.
        """
        state, s = self.state, self.settings
        tasks = self._tasks()
        started = time.monotonic()
        total_rows = sum(p.rows for p in state.plans.values())
        self.writer.ensure_topics([table_topic(s.topic_prefix, self.tables[name]) for name in state.plans])
        # every table's schemas now, in one batch: the workers find them on the schema topic
        self.writer.publish_schemas(list(self.tables.values()))
        self.progress = SnapshotProgress(
            {name: (plan.rows, plan.estimate) for name, plan in state.plans.items() if not plan.complete()}
        )
        try:
            exporter = None
            if tasks:
                if exported is None:
                    exporter, exported = self._export()
                try:
                    if not self._read(tasks, exported):
                        return False
                finally:
                    if exporter is not None:
                        exporter.close()
            self._finish()
        finally:
            self.progress.close()
        rows = sum(p.rows for p in state.plans.values()) - total_rows
        seconds = time.monotonic() - started
        rate = rows / seconds if seconds > 0 else 0.0
        self.status.snapshot.update(rows=rows, seconds=round(seconds, 3), rows_per_second=round(rate))
        log.info(
            "initial snapshot complete: %s rows of %d tables in %.1f s (%s rows/s); streaming from %s",
            f"{rows:,}", len(state.plans), seconds, f"{rate:,.0f}", format_lsn(state.consistent_lsn),
        )  # fmt: skip
        return True

    def _tasks(self) -> list[tuple[str, int]]:
        """Pending chunks, round-robin over the tables so that several tables progress at once."""
        pending = [
            [(name, i) for i in range(plan.chunks) if i not in plan.done]
            for name, plan in self.state.plans.items()
            if not plan.gave_up
        ]
        tasks = []
        for round_ in range(max((len(p) for p in pending), default=0)):
            tasks += [p[round_] for p in pending if round_ < len(p)]
        if self.exactly_once:
            # the chunk read last carries "last": one with an upper bound, planned full (a table's
            # tail chunk, past its last bound, is often empty)
            bounded = [t for t in tasks if t[1] < len(self.state.plans[t[0]].bounds)]
            if bounded:
                tasks.remove(bounded[-1])
                tasks.append(bounded[-1])
        return tasks

    def _export(self) -> tuple[psycopg.Connection[Any], str]:
        """A fresh snapshot for the workers to share (the slot's exported one is gone)."""
        s = self.settings
        exporter = pg.connect(s.dsn, f"cdc-{s.name}-snapshot")
        try:
            with pg.errors("exporting a snapshot"):
                exporter.autocommit = False
                exporter.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                exporter.read_only = True
                row = exporter.execute("SELECT pg_export_snapshot()").fetchone()
        except BaseException:
            exporter.close()
            raise
        assert row is not None
        return exporter, str(row[0])

    def _read(self, tasks: list[tuple[str, int]], exported: str) -> bool:
        s = self.settings
        context = multiprocessing.get_context("spawn")  # fork is unsafe with the producer's threads
        workers = min(s.snapshot_workers, len(tasks))
        job = WorkerJob(
            s,
            self.source,
            exported,
            {name: self.specs[name] for name in self.state.plans},
            {name: plan.bounds for name, plan in self.state.plans.items()},
            self.state.consistent_lsn,
            self.ts_ms,
            logging.getLogger().getEffectiveLevel(),
            self.system_id,
        )
        pipes: dict[int, Connection] = {}
        processes: dict[int, SpawnProcess | threading.Thread] = {}
        rows = sum(max(plan.estimate - plan.rows, 0) for plan in self.state.plans.values())
        threads = rows < THREADS_BELOW_ROWS
        for n in range(workers):
            ours, theirs = context.Pipe()
            if threads:
                processes[n] = threading.Thread(
                    target=serve,
                    args=(job, n, theirs, Shared(self.tables, self.writer.serializer)),
                    name=f"cdc-snapshot-{n}",
                    daemon=True,
                )
            else:
                processes[n] = context.Process(
                    target=worker_main, args=(job, n, os.getpid(), theirs), name=f"cdc-snapshot-{n}"
                )
                processes[n].daemon = True
            pipes[n] = ours
            processes[n].start()
            if not threads:
                theirs.close()  # a thread's end closes with the worker (`serve`)
        kind = "threads (a small snapshot)" if threads else "workers"
        log.info("snapshot: %d chunks of %d tables, %d %s", len(tasks), len(self.state.plans), workers, kind)
        self.queue = deque(tasks)
        error: CdcError | None = None
        aborted = False
        next_report = next_save = 0.0
        try:
            while pipes:
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + s.status_interval
                    self._report()
                for ready in wait(list(pipes.values()), timeout=0.1):
                    n = next(k for k, v in pipes.items() if v is ready)
                    pipe = pipes[n]
                    try:
                        message: tuple[Any, ...] = pipe.recv()
                    except (EOFError, OSError):  # gone without saying goodbye
                        processes[n].join(5)
                        message = ("exit", n)
                        error = error or SourceError(
                            f"snapshot worker {n} died (exit code {getattr(processes[n], 'exitcode', '-')}); "
                            "see the log; the next start resumes the snapshot"
                        )
                    if message[0] in ("ready", "want"):
                        self.busy.discard(n)
                        self.waiting.append(n)
                    elif message[0] == "exit":
                        del pipes[n]
                        self.busy.discard(n)
                    else:
                        error = error or self._on_message(message)
                self._dispatch(pipes, aborted)
                self._settle()
                if self.unsaved and time.monotonic() >= next_save:
                    self._save()
                    next_save = time.monotonic() + SAVE_INTERVAL
                if not aborted and (error is not None or self.stop.is_set()):
                    aborted = True  # what Kafka holds stays recorded; the rest is read next time
                    if error is None:
                        log.info("stopping the snapshot; the next start resumes it")
                    for pipe in pipes.values():
                        send(pipe, ("abort",))
        finally:
            self._save()
            for pipe in pipes.values():
                send(pipe, ("abort",))
            for process in processes.values():
                process.join(10)
                if process.is_alive() and not isinstance(process, threading.Thread):
                    process.kill()  # a thread stops at its next pipe check (daemon: never holds the exit)
                    process.join(5)
        if error is not None:
            raise error
        if aborted:
            self._flush_held("true")
            return False
        return True

    def _dispatch(self, pipes: dict[int, Connection], aborted: bool) -> None:
        """Hand chunks to the workers asking for one; "done" once there are none left."""
        while self.waiting:
            n = self.waiting[0]
            if n not in pipes:
                self.waiting.pop(0)
                continue
            if aborted or not self.queue:
                self.waiting.pop(0)
                send(pipes[n], ("done",))
                continue
            if self.exactly_once and len(self.queue) == 1 and self.busy:
                return  # the last chunk waits for every other one to be committed
            self.waiting.pop(0)
            name, index = self.queue.popleft()
            last = self.exactly_once and not self.queue
            self.busy.add(n)
            send(pipes[n], ("task", name, index, last))

    def _save(self) -> None:
        """``snapshot.json`` with the chunks Kafka holds. Written late, a chunk is only read again
        after a crash (its rows are in Kafka either way); never written early."""
        if self.unsaved:
            self.store.save(self.state)
            self.unsaved = False

    def _report(self) -> None:
        """Progress into the connector's status (``cdc status``)."""
        assert self.progress is not None
        tables = self.status.snapshot.setdefault("tables", {})
        for name, plan in self.state.plans.items():
            tables[name] = {
                "rows": self.progress.rows.get(name, plan.rows),
                "estimate": plan.estimate,
                "chunks": plan.chunks,
                "chunks_done": len(plan.done),
                **({"gave_up": plan.gave_up} if plan.gave_up else {}),
            }
        self.status.report()

    def _on_message(self, message: tuple[Any, ...]) -> CdcError | None:
        kind = message[0]
        if kind == "progress":
            assert self.progress is not None
            self.progress.advance(message[1], message[2])
            self.status.progressed = True  # rows flow: a lost connection from now on is retried
        elif kind == "chunk":
            _, name, index, rows, held = message
            if held is None:
                self._chunk_done(name, index, rows)
            else:
                # the final row of the snapshot must carry "last": hold one back until the next arrives
                if self.held is not None:
                    self._emit_held("true")
                self.held = (name, index, rows, held)
        elif kind == "changed":
            self._gave_up(message[1], message[3])
        elif kind == "error":
            _, cls_name, text, retriable = message
            cls = ERRORS.get(cls_name, SourceError)
            if cls is SinkError:
                return SinkError(text, retriable=retriable)
            return cls(text)
        return None

    def _gave_up(self, name: str, why: str) -> None:
        """The table was rewritten or dropped under the snapshot: its snapshot ends here, the other
        tables go on, and a rewritten table is read again incrementally once streaming starts.

        Exact: the stream replays every change after the consistent point (a TRUNCATE among
        them), and an incremental snapshot is exact against the stream (DBLog).
        """
        plan = self.state.plans[name]
        if plan.gave_up:
            return  # another worker found it too
        plan.gave_up = why
        self.queue = deque(task for task in self.queue if task[0] != name)
        if why == DROPPED:
            log.warning("table %s was dropped during the initial snapshot: its snapshot stops here", name)
        elif self.tables[name].has_key:
            log.warning(
                "table %s was rewritten (TRUNCATE, ALTER TABLE, CLUSTER or VACUUM FULL) during the initial "
                "snapshot, which cannot read it any more: an incremental snapshot reads it again once "
                "streaming starts; the other tables go on",
                name,
            )
            if all(task.table != name for task in self.state.incremental):
                self.state.incremental.append(IncrementalTask(name))
        else:
            log.warning(
                "table %s was rewritten (TRUNCATE, ALTER TABLE, CLUSTER or VACUUM FULL) during the initial "
                "snapshot, which cannot read it any more, and it has no key to be read again "
                "incrementally: the stream carries its changes from the snapshot's consistent point (a "
                "TRUNCATE among them empties it), but rows kept through another rewrite are not sent; "
                "give it a primary key and run `cdc snapshot %s`",
                name,
                name,
            )
        self.store.save(self.state)
        assert self.progress is not None
        self.progress.table_done(name, plan.rows)

    def _emit_held(self, snapshot: str) -> None:
        assert self.held is not None
        name, index, rows, values = self.held
        self.held = None
        table = self.tables[name]
        lsn = self.state.consistent_lsn
        token = InFlight(lsn)
        topic = table_topic(self.settings.topic_prefix, table)
        self.writer.write_reads(table, [values], lsn, self.ts_ms, snapshot, token, topic)
        self.unacked.append((token, name, index, rows))

    def _flush_held(self, snapshot: str) -> None:
        """Produce the row held back and wait for Kafka, so its chunk counts as done."""
        if self.held is not None:
            self._emit_held(snapshot)
        self.writer.flush(30)
        self._settle()
        self._save()

    def _settle(self) -> None:
        self.writer.poll()
        while self.unacked and not self.unacked[0][0].pending:
            _, name, index, rows = self.unacked.popleft()
            self._chunk_done(name, index, rows)

    def _chunk_done(self, name: str, index: int, rows: int) -> None:
        plan = self.state.plans[name]
        if index in plan.done:
            return
        plan.done.add(index)
        plan.rows += rows
        status = self.status
        status.events_total += rows
        status.events_per_table[name] += rows
        self.unsaved = True  # written at most every SAVE_INTERVAL: an fsync per chunk would cost more
        if plan.complete() and not plan.gave_up:
            assert self.progress is not None
            self.progress.table_done(name, plan.rows)

    def _finish(self) -> None:
        """The final row gets "last"; the snapshot is complete once Kafka holds it."""
        if self.held is not None:
            self._emit_held("last")
        if not self.writer.flush(60):
            raise SinkError("kafka did not acknowledge the last snapshot rows within 60 s", retriable=True)
        self._settle()
        self._save()
        if self.unacked or not all(plan.complete() for plan in self.state.plans.values()):
            raise SinkError("kafka did not acknowledge every snapshot row", retriable=True)
        self.state.phase = "complete"
        self.state.completed_at = time.time()
        self.store.save(self.state)
        self.status.snapshot["phase"] = "complete"
        self._report()


# -- the hook before streaming ---------------------------------------------------------


@dataclass(slots=True)
class Start:
    """What the session knows when it is about to stream."""

    system_id: str
    database: str
    slot_lsn: int  # the slot's confirmed_flush_lsn (its consistent point if just created)
    new_slot: bool
    exported: str | None  # the snapshot the new slot exported
    source: SourceInfo
    #: with exactly-once, the chunks Kafka committed: (consistent lsn, table, chunk) -> rows
    committed_chunks: dict[tuple[int, str, int], int] = field(default_factory=dict)


def before_streaming(
    settings: Settings,
    status: Status,
    stop: threading.Event,
    conn: psycopg.Connection[Any],
    writer: RecordWriter,
    catalog: TypeCatalog,
    start: Start,
) -> bool:
    """Run the initial snapshot (or what is left of it) before START_REPLICATION.

    Also notices tables added to ``--tables`` since the last start and queues
    incremental snapshots of them. Returns False when the connector must not
    stream: stopped during the snapshot, or ``--snapshot initial-only``.
    Raises `SourceError` when the slot moved past an unfinished snapshot.
    """
    s = settings
    store = SnapshotStore(s.instance_dir)
    state = store.load()
    tables = captured_tables(conn, s.tables, s.publication, s.exclude_tables)
    selection = Selection.from_settings(s)
    patterns = not (selection.exact or selection.everything)
    # what the next start compares with: --tables names, or the set patterns matched
    listed = tables if patterns else [normalize_table(t) for t in s.tables]
    if start.new_slot or not state.belongs_to(s.slot, start.system_id, start.database):
        if not start.new_slot and s.snapshot == "initial-only":
            raise SourceError(
                f"slot {s.slot!r} exists without a snapshot of this connector: --snapshot initial-only "
                "needs a new slot; drop the slot or choose another --slot"
            )
        state = SnapshotState(
            s.slot, start.system_id, start.database, start.slot_lsn, "skipped", listed, started_at=time.time()
        )
        if start.new_slot and s.snapshot != "never":
            state.phase = "running"
            log.info(
                "initial snapshot of %d tables at %s (snapshot %s)",
                len(tables), format_lsn(start.slot_lsn), start.exported,
            )  # fmt: skip
    elif s.snapshot == "initial-only" and state.phase in ("skipped", "abandoned"):
        raise SourceError(
            f"slot {s.slot!r} was created without a snapshot (--snapshot never): --snapshot initial-only "
            "needs a new slot; drop the slot or choose another --slot"
        )
    elif state.phase == "running" and s.snapshot == "never":
        log.warning("the initial snapshot was not finished; --snapshot never abandons it")
        state.phase = "abandoned"
    elif state.phase == "running" and start.slot_lsn != state.consistent_lsn:
        raise SourceError(
            f"slot {s.slot!r} was confirmed to {format_lsn(start.slot_lsn)}, past the unfinished snapshot "
            f"at {format_lsn(state.consistent_lsn)}: changes could be missing; drop the slot and "
            f"{store.path} to snapshot again"
        )
    specs: dict[str, TableSpec] = {}
    if state.phase == "running":
        specs = _plan(conn, s, state, tables, catalog)
        for (lsn, name, index), rows in start.committed_chunks.items():
            plan = state.plans.get(name)
            if lsn == state.consistent_lsn and plan is not None and index not in plan.done:
                # committed to Kafka with its rows before the last stop wrote it down here
                plan.done.add(index)
                plan.rows += rows
    elif s.snapshot != "never":
        _queue_added_tables(state, listed, patterns)
    state.tables = listed
    store.save(state)
    status.snapshot = {"phase": state.phase}
    if state.phase == "running":
        status.state = "snapshotting"
        status.report()
        snapshot = InitialSnapshot(
            s, status, stop, writer, start.source, start.system_id, catalog, state, store, specs
        )
        if not snapshot.run(start.exported if start.new_slot else None):
            return False
    elif s.snapshot == "initial-only":
        log.info("the initial snapshot is already complete: nothing to do (--snapshot initial-only)")
    return s.snapshot != "initial-only"


def _plan(
    conn: psycopg.Connection[Any], s: Settings, state: SnapshotState, tables: list[str], catalog: TypeCatalog
) -> dict[str, TableSpec]:
    """Describe the tables; chunk the ones not planned yet; log where each resumes."""
    specs = {name: describe_table(conn, name, s.publication, size=True) for name in tables}
    for name in [n for n in state.plans if n not in specs]:
        log.info("table %s is no longer captured: dropped from the snapshot", name)
        del state.plans[name]
    resuming = any(plan.done for plan in state.plans.values())
    for name, spec in specs.items():
        plan = state.plans.get(name)
        if plan is None:
            bounds = (
                []  # too small for two chunks: its keys are not read
                if spec.max_rows is not None and spec.max_rows <= s.snapshot_chunk_rows
                else chunk_bounds(conn, spec, table_from_spec(spec, catalog), s.snapshot_chunk_rows)
            )
            estimate = max(spec.estimate, len(bounds) * s.snapshot_chunk_rows)
            state.plans[name] = TablePlan(bounds, estimate=estimate)
            if resuming:
                log.info("table %s joins the unfinished snapshot", name)
        elif plan.complete():
            log.info("snapshot of %s: already complete (%s rows)", name, f"{plan.rows:,}")
        elif plan.done:
            log.info(
                "snapshot of %s resumes from chunk %d of %d (%d chunks, %s rows already in kafka)",
                name, plan.first_pending() + 1, plan.chunks, len(plan.done), f"{plan.rows:,}",
            )  # fmt: skip
    state.plans = {name: state.plans[name] for name in specs}  # in table order
    return specs


def _queue_added_tables(state: SnapshotState, listed: list[str], patterns: bool = False) -> None:
    """Tables added to an explicit ``--tables`` since the last start get an incremental snapshot, and
    so do tables that match ``--tables`` patterns and were not captured before (created while the
    connector was stopped: the publication took them only now)."""
    if not patterns and (not state.tables or not listed):
        return  # all tables: new ones are streamed from their creation
    queued = {task.table for task in state.incremental}
    for name in listed:
        if name not in state.tables and name not in queued:
            why = "matches --tables" if patterns else "was added to --tables"
            log.info("table %s %s: queueing an incremental snapshot of it", name, why)
            state.incremental.append(IncrementalTask(name))
    state.incremental = [task for task in state.incremental if task.table in listed]
