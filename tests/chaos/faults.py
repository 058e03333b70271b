"""The faults, each a function of a running `Chaos` scene, shared by the test cases and the soak.

A scene is a database with the workload's tables, a broker, a `cdc start`
process (``--delivery at-least-once`` or ``exactly-once``) and the workload
writing in the background. A fault does its harm, waits until the connector
is streaming again (by itself, or restarted as an operator or supervisor
would), and returns a `FaultRecord` saying what it did.

On Apache Kafka a broker restart (stop, or kill -9) keeps everything it
acknowledged: the loss horizon stays 0 and the verifier excuses nothing.
Tansu keeps nothing: there the scene keeps the *loss horizon* (see
`tests.chaos.verify`) of each restart.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from cdc.devservers import PostgresServer
from cdc.kafka import resolve_producer_kind
from cdc.lsn import parse_lsn
from tests.chaos import harness
from tests.chaos.verify import Report, decoder, read_all, verify
from tests.chaos.workload import BULK, SCHEMA, Workload, create_schema, published_tables
from tests.support import (
    FAST_FAILING_PRODUCER,
    OUTLIVING_PRODUCER,
    ConnectorProcess,
    WaitTimeout,
    current_wal,
    producer_config_args,
    scalar,
    slot_active_pid,
    slot_confirmed,
    wait_until,
)
from tests.support.brokers import BrokerProcess, durable

AT_LEAST_ONCE = "at-least-once"
EXACTLY_ONCE = "exactly-once"
DELIVERIES = (AT_LEAST_ONCE, EXACTLY_ONCE)
#: how long a read_committed check waits for the commit markers of what Kafka committed (`Chaos.verify`)
MARKER_WAIT = 30.0


@dataclass(slots=True)
class FaultRecord:
    name: str
    at: float  # seconds since the scene started
    seconds: float
    detail: str = ""
    landed: bool = True  # False: the fault missed the moment it aimed at (e.g. a large transaction's middle)


@dataclass
class Chaos:
    """Everything a fault acts on. ``server`` is a cluster the scene may restart."""

    server: PostgresServer
    dsn: str
    broker: BrokerProcess
    connector: ConnectorProcess
    workload: Workload
    rng: random.Random
    delivery: str = AT_LEAST_ONCE
    horizon: int = 0
    faults: list[FaultRecord] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    max_lag_bytes: int = 0
    checkpoint_checks: list[Report] = field(default_factory=list)
    #: after a kill -9 and before a broker restart, check that everything confirmed is in Kafka
    verify_checkpoints: bool = False
    #: check at every N-th of those moments only (each check reads every topic from the start)
    checkpoint_every: int = 1
    _checkpoint_moments: int = 0
    large_rows: int = 30_000  # rows of the transaction kill9_large_transaction interrupts
    snapshot_lsn: int | None = None  # the initial snapshot's consistent point, when there was one
    _lag_stop: threading.Event = field(default_factory=threading.Event)
    _lag_thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def sample_lag(self, interval: float = 1.0) -> None:
        """Track the largest distance between the server's WAL and the slot's confirmed position."""

        def loop() -> None:
            while not self._lag_stop.wait(interval):
                with contextlib.suppress(Exception):  # the server may be restarting: skip the sample
                    lag = current_wal(self.dsn) - slot_confirmed(self.dsn, self.connector.slot)
                    self.max_lag_bytes = max(self.max_lag_bytes, lag)

        self._lag_thread = threading.Thread(target=loop, name="lag", daemon=True)
        self._lag_thread.start()

    def stop_sampling(self) -> None:
        self._lag_stop.set()
        if self._lag_thread is not None:
            self._lag_thread.join(10)

    def caught_up(self, timeout: float = 120) -> None:
        """Until the connector has confirmed everything written so far."""
        target = current_wal(self.dsn)
        wait_until(lambda: self.connector.caught_up(target), timeout, "the connector to confirm the WAL end")

    def finish(self, timeout: float = 180) -> Report:
        """Stop the workload, let the connector catch up, stop it gracefully, verify everything."""
        self.workload.halt()
        if not self.connector.alive():
            self.connector.start()
        self.caught_up(timeout)
        stopped = self.connector.stop()
        assert stopped.returncode == 0, f"cdc stop failed: {stopped.stderr.strip()}"
        self.stop_sampling()
        return self.verify()

    @property
    def exactly_once(self) -> bool:
        return self.delivery == EXACTLY_ONCE

    @property
    def durable(self) -> bool:
        """Does the broker keep what it acknowledged across restarts (Apache Kafka)?"""
        return durable(self.broker)

    def verify(self, confirmed: int | None = None) -> Report:
        """Every topic against the ledger; with exactly-once, read committed and no duplicate at all.

        Kafka answers a commit before it writes the commit markers into the
        data partitions, and a read_committed consumer sees a transaction only
        once its markers are there. So, with exactly-once and the connector
        not running, a failed check reads again for up to `MARKER_WAIT`
        seconds: no process is left that could commit anything, so what shows
        up then was committed already. What stays hidden was not.
        """
        report = self._verify(confirmed)
        if report.ok or not self.exactly_once or self.connector.alive():
            return report
        began, first = time.monotonic(), report
        while not report.ok and time.monotonic() - began < MARKER_WAIT:
            time.sleep(0.5)
            report = self._verify(confirmed)
        if report.ok:
            print(
                f"read_committed: {first.violation_count} violations at the first read, none after "
                f"{time.monotonic() - began:.1f} s (commit markers written after the commit returned)"
            )
        return report

    def _verify(self, confirmed: int | None) -> Report:
        bootstrap, prefix = self.broker.bootstrap_servers, self.connector.prefix
        isolation = "read_committed" if self.exactly_once else "read_uncommitted"
        records = read_all(bootstrap, prefix, live=confirmed is not None, isolation=isolation)
        decode = decoder(self.connector.format, bootstrap, prefix)
        return verify(
            records, self.workload.ledger, decode, self.horizon, confirmed, self.snapshot_lsn,
            exactly_once=self.exactly_once,
        )  # fmt: skip

    def records_of(self, tag: int) -> int:
        """How many records of the transaction tagged ``tag`` (its rows carry the tag) Kafka holds."""
        bootstrap, prefix = self.broker.bootstrap_servers, self.connector.prefix
        decode = decoder(self.connector.format, bootstrap, prefix)
        held = 0
        for record in read_all(bootstrap, prefix, live=True):
            if record.value is not None and record.topic.endswith(f".{SCHEMA}.{BULK}"):
                _, value = decode(record.topic, record.key, record.value)
                held += (value.get("after") or {}).get("txn") == tag
        return held

    def check_checkpoint(self, when: str) -> None:
        """The checkpoint invariant, now: every transaction the slot has confirmed is in Kafka."""
        if not self.verify_checkpoints:
            return
        self._checkpoint_moments += 1
        if (self._checkpoint_moments - 1) % self.checkpoint_every:
            return
        confirmed = slot_confirmed(self.dsn, self.connector.slot)
        report = self.verify(confirmed=confirmed)
        self.checkpoint_checks.append(report)
        assert report.ok, f"{when}, confirmed {confirmed:X}: {report.summary()}"

    def record(self, name: str, began: float, detail: str = "") -> FaultRecord:
        fault = FaultRecord(name, began - self.started, time.monotonic() - began, detail)
        self.faults.append(fault)
        return fault

    def progress(self, events: int = 1, timeout: float = 60) -> None:
        """Until the running connector has streamed ``events`` more events in its current process."""
        base = int(self.connector.status().get("events_total") or 0)
        wait_until(
            lambda: int(self.connector.status().get("events_total") or 0) >= base + events,
            timeout,
            "the connector to stream again",
        )


# -- the faults -----------------------------------------------------------------------------------


def chunks_done(state: dict[str, Any]) -> int:
    return sum(len(plan.get("done", ())) for plan in state.get("plans", {}).values())


def start_with_snapshot(
    scene: Chaos, kill_after_chunks: int | None = None, strict: bool = True
) -> FaultRecord | None:
    """Start the connector on a new slot with an initial snapshot, then the workload.

    With ``kill_after_chunks``: SIGKILL it once that many snapshot chunks are
    recorded as done (Kafka holds them), and start it again: the snapshot
    resumes, the stream starts at the consistent point. ``strict``: fail if
    the snapshot ended before the kill (else the kill just lands after it).
    """
    connector = scene.connector
    connector.snapshot = "initial"
    connector.start(wait=False)
    state = wait_until(
        lambda: connector.snapshot_state().get("consistent_lsn") and connector.snapshot_state(),
        60, "the initial snapshot to begin", interval=0.01,
    )  # fmt: skip
    scene.snapshot_lsn = parse_lsn(str(state["consistent_lsn"]))
    scene.workload.start()  # writes while the snapshot reads
    if kill_after_chunks is None:
        connector.wait_state("running", timeout=180)
        return None
    wait_until(
        lambda: chunks_done(connector.snapshot_state()) >= kill_after_chunks or not connector.alive(),
        120, f"{kill_after_chunks} snapshot chunks", interval=0.005,
    )  # fmt: skip
    began = time.monotonic()
    connector.kill9()
    state = connector.snapshot_state()
    done = chunks_done(state)
    total = sum(len(plan.get("bounds", ())) + 1 for plan in state.get("plans", {}).values())
    if state.get("phase") != "running" and not strict:
        connector.start()
        return scene.record("kill -9 after the initial snapshot", began, "it ended before the kill")
    assert state.get("phase") == "running", f"the snapshot ended ({state.get('phase')}) before the kill"
    connector.start(wait=False)
    connector.wait_state("running", timeout=180)
    assert connector.snapshot_state().get("phase") == "complete"
    return scene.record("kill -9 in the initial snapshot", began, f"after {done} of {total} chunks")


def kill9(scene: Chaos) -> FaultRecord:
    """SIGKILL the connector while it streams; start it again as a supervisor would."""
    began = time.monotonic()
    scene.connector.kill9()
    scene.check_checkpoint("after kill -9")
    scene.connector.start()
    scene.progress()
    return scene.record("kill -9", began)


def kill9_large_transaction(scene: Chaos) -> FaultRecord:
    """Commit a large transaction, SIGKILL the connector part-way through sending it, restart.

    The round starts once the last round's transaction is confirmed, and the
    kill waits on the status's count for the bulk table, which only the large
    transactions write (the total counts the workload's small ones too). The
    status lags by a status interval, so whether the kill landed inside the
    transaction is read from Kafka afterwards: some of its records, not all,
    were there.
    """
    rows = scene.large_rows
    # a restarted connector may still be sending the last round's transaction again
    mark = current_wal(scene.dsn)
    slot = scene.connector.slot
    wait_until(lambda: slot_confirmed(scene.dsn, slot) >= mark, 120, "the connector to catch up")
    base = bulk_events(scene.connector.status())
    txn = scene.workload.large_insert(rows)
    assert txn is not None, "the large transaction did not commit"
    fraction = scene.rng.uniform(0.1, 0.5)
    wait_until(
        lambda: bulk_events(scene.connector.status()) >= base + int(rows * fraction),
        120,
        f"{fraction:.0%} of the large transaction to be streamed",
    )
    began = time.monotonic()
    streamed = bulk_events(scene.connector.status()) - base
    scene.connector.kill9()
    held = scene.records_of(txn.tag)
    scene.check_checkpoint("after kill -9 in a large transaction")
    scene.connector.start()
    scene.progress()
    detail = f"{rows} rows, killed after ~{streamed} were read, {held} of them in Kafka"
    fault = scene.record("kill -9 in a large txn", began, detail)
    fault.landed = 0 < held < rows
    return fault


def bulk_events(status: dict[str, Any]) -> int:
    return int((status.get("events_per_table") or {}).get(f"{SCHEMA}.{BULK}") or 0)


def stop_start(scene: Chaos) -> FaultRecord:
    """`cdc stop`, a pause while the workload goes on, `cdc start`."""
    began = time.monotonic()
    result = scene.connector.stop()
    assert result.returncode == 0, f"cdc stop failed: {result.stderr.strip()}"
    time.sleep(scene.rng.uniform(0, 1.5))  # the workload writes while the connector is down
    scene.connector.start()
    scene.progress()
    return scene.record("cdc stop / start", began)


def postgres_restart(mode: str) -> Callable[[Chaos], FaultRecord]:
    def fault(scene: Chaos) -> FaultRecord:
        """``pg_ctl restart -m MODE``: the connector reconnects by itself (same process)."""
        pid = scene.connector.pid
        sessions = int(scene.connector.status().get("sessions") or 1)
        began = time.monotonic()
        scene.server.restart(mode)
        scene.connector.wait_state("running", timeout=90, sessions=sessions + 1)
        assert scene.connector.pid == pid and scene.connector.alive()
        scene.progress()
        return scene.record(f"postgres restart -m {mode}", began)

    fault.__name__ = f"postgres_restart_{mode}"
    return fault


def walsender_terminated(scene: Chaos) -> FaultRecord:
    """``pg_terminate_backend`` of the slot's walsender: the connector reconnects by itself."""
    sessions = int(scene.connector.status().get("sessions") or 1)
    began = time.monotonic()
    active = wait_until(lambda: slot_active_pid(scene.dsn, scene.connector.slot), 30, "an active walsender")
    scalar(scene.dsn, "SELECT pg_terminate_backend(%s)", (active,))
    scene.connector.wait_state("running", timeout=60, sessions=sessions + 1)
    scene.progress()
    return scene.record("walsender terminated", began)


def broker_restart(kill: bool) -> Callable[[Chaos], FaultRecord]:
    def fault(scene: Chaos) -> FaultRecord:
        """Stop the broker (``kill``: kill -9) for a few seconds and start it again.

        Apache Kafka comes back with every record it acknowledged, so nothing
        may be missing afterwards; the outage lasts until the session fails
        (15 s at most). Tansu comes back empty: the fault waits until the
        session has failed (state "reconnecting"), so that the connector's
        confirmed position is final for the old broker: that is the loss
        horizon, and the connector must send everything after it again.
        """
        scene.check_checkpoint("before the broker restart")  # before the evidence goes
        began = time.monotonic()
        if kill:
            scene.broker.kill()
        else:
            scene.broker.stop()
        how = "kill -9" if kill else "down"
        detail = ""
        if scene.durable:
            # nothing to account for: the session fails (at-least-once: within the producer's
            # timeouts) or outlives the outage (an exactly-once commit waits for its coordinator)
            try:
                scene.connector.wait_state("reconnecting", timeout=15)
                detail = "the session failed"
            except WaitTimeout:
                detail = "the session outlived the outage"
        else:
            scene.connector.wait_state("reconnecting", timeout=60)
            horizon = max(
                slot_confirmed(scene.dsn, scene.connector.slot),
                harness.offsets_lsn(scene.connector.instance_dir),
            )
            scene.horizon = max(scene.horizon, horizon)
            detail = f"loss horizon {horizon:X}"
        time.sleep(scene.rng.uniform(0.5, 2))  # more of the outage, with the workload writing
        scene.broker.start()
        scene.connector.wait_state("running", timeout=90)
        scene.progress()
        kept = "restarted, durable" if scene.durable else "restarted empty"
        return scene.record(f"broker {how} ({kept})", began, detail)

    fault.__name__ = "broker_kill9" if kill else "broker_restart"
    return fault


def status_after(connector: ConnectorProcess, moment: float) -> dict[str, Any] | None:
    """The connector's status, once written after ``moment`` (a ``time.time()``)."""
    status = connector.status()
    return status if float(status.get("updated_at") or 0) > moment else None


def broker_blip(scene: Chaos) -> FaultRecord:
    """Stop the broker for less than the producer's timeouts and start it again.

    With timeouts longer than the outage the session outlives it. The
    connector must carry on (the same session, or a new one with a new
    producer), not exit. Apache Kafka comes back with its data, so nothing
    may be missing. Tansu comes back empty: the records it acknowledged are
    gone, and the producer finds a broker that does not know it; the loss
    horizon is what the connector had *received* when the old broker died
    (it cannot have acknowledged more), read from status.json after a
    status interval.
    """
    pid = scene.connector.pid
    began = time.monotonic()
    scene.broker.stop()
    died = time.time()
    detail = ""
    if not scene.durable:
        status = wait_until(
            partial(status_after, scene.connector, died + 0.2), 30, "a status after the broker stopped"
        )
        horizon = parse_lsn(str(status.get("received_lsn") or "0/0"))
        scene.horizon = max(scene.horizon, horizon)
        detail = f"loss horizon {horizon:X}"
    time.sleep(scene.rng.uniform(0.5, 2))  # more of the outage, with the workload writing
    scene.broker.start()
    scene.progress(timeout=60)
    assert scene.connector.pid == pid and scene.connector.alive(), "the connector exited"
    kept = "durable" if scene.durable else "restarted empty"
    return scene.record(f"broker blip ({kept})", began, detail)


def broker_paused(scene: Chaos) -> FaultRecord:
    """SIGSTOP the broker for a few seconds (a broker that hangs), then SIGCONT."""
    seconds = scene.rng.uniform(1, 4)
    began = time.monotonic()
    scene.broker.pause()
    try:
        time.sleep(seconds)  # the length of the hang is the fault
    finally:
        scene.broker.resume()
    scene.connector.wait_state("running", timeout=90)
    scene.progress()
    return scene.record("broker paused", began, f"{seconds:.1f} s")


def slow_link(scene: Chaos) -> FaultRecord:
    """A slow, lossy link to the broker for a few seconds (tbf on a veth pair), then a clean one."""
    link = harness.link_of(scene.broker)
    if link is None:
        raise harness.LinkUnavailable("the scene's broker is not behind a shaped link")
    seconds = scene.rng.uniform(2, 6)
    began = time.monotonic()
    link.shape()
    try:
        time.sleep(seconds)  # the slow period is the fault
    finally:
        link.unshape()
    scene.connector.wait_state("running", timeout=90)
    scene.progress()
    return scene.record("slow, lossy link", began, f"{seconds:.1f} s at 200 kbit/s")


def _state_dir_fault(scene: Chaos, name: str, harm: Callable[[], Callable[[], None]]) -> FaultRecord:
    """Break the state directory, expect a one-line error and nothing confirmed beyond the file, repair."""
    connector = scene.connector
    began = time.monotonic()
    repair = harm()
    try:
        code = connector.wait_exit(60)
    finally:
        repair()
    lines = [line for line in connector.logs[-1].read_text(errors="replace").splitlines() if line.strip()]
    assert code == 1, f"{name}: the connector exited with {code}: {lines[-3:]}"
    assert lines[-1].startswith("cdc: error: cannot write") and "offsets.json" in lines[-1], lines[-3:]
    assert "Traceback" not in "\n".join(lines)
    persisted = harness.offsets_lsn(connector.instance_dir)
    confirmed = slot_confirmed(scene.dsn, connector.slot)
    assert confirmed <= persisted, f"{name}: slot confirmed {confirmed:X} beyond the persisted {persisted:X}"
    connector.start()
    scene.progress()
    return scene.record(name, began, lines[-1].removeprefix("cdc: error: ")[:80])


def state_dir_full(scene: Chaos) -> FaultRecord:
    """The state directory's filesystem fills up (it must be a small tmpfs: `harness.small_filesystem`)."""
    instance_dir = scene.connector.instance_dir

    def harm() -> Callable[[], None]:
        return harness.fill(instance_dir.parent).unlink

    return _state_dir_fault(scene, "state dir full", harm)


def state_dir_read_only(scene: Chaos) -> FaultRecord:
    """The state directory becomes unwritable (``chattr +i``: it stops root too)."""
    instance_dir = scene.connector.instance_dir

    def harm() -> Callable[[], None]:
        harness.set_immutable(instance_dir, True)
        return lambda: harness.set_immutable(instance_dir, False)

    return _state_dir_fault(scene, "state dir read-only", harm)


FAULTS: dict[str, Callable[[Chaos], FaultRecord]] = {
    "kill9": kill9,
    "kill9_large_txn": kill9_large_transaction,
    "stop_start": stop_start,
    "pg_restart_fast": postgres_restart("fast"),
    "pg_restart_immediate": postgres_restart("immediate"),
    "walsender_kill": walsender_terminated,
    "broker_restart": broker_restart(kill=False),
    "broker_kill9": broker_restart(kill=True),
    "broker_blip": broker_blip,
    "broker_pause": broker_paused,
    "slow_link": slow_link,
    "state_dir_full": state_dir_full,
    "state_dir_read_only": state_dir_read_only,
}


def new_scene(
    server: PostgresServer,
    dsn: str,
    broker: BrokerProcess,
    state_dir: Path,
    prefix: str,
    name: str,
    seed: int,
    rate: float = 100.0,
    reconnect_max_seconds: float = 1.0,
    fast_failing: bool = True,
    producer: str = "auto",
    format: str = "avro",
    delivery: str = AT_LEAST_ONCE,
) -> Chaos:
    """A scene with the workload's tables; the connector is not started yet.

    ``fast_failing``: producer timeouts of a few seconds, so that a lost
    broker ends the session quickly (the loss horizon is then exact);
    otherwise timeouts a short outage stays within (`tests.support.OUTLIVING_PRODUCER`).
    ``delivery``: ``--delivery`` of the connector; with exactly-once the
    verifier reads committed records only and allows no duplicate.
    """
    if delivery not in DELIVERIES:
        raise ValueError(f"delivery {delivery!r}: {' or '.join(DELIVERIES)}")
    create_schema(dsn)
    kind = resolve_producer_kind(producer)
    settings = (FAST_FAILING_PRODUCER if fast_failing else OUTLIVING_PRODUCER)[kind]
    extra = producer_config_args(settings)
    if delivery == EXACTLY_ONCE:
        extra += ["--delivery", EXACTLY_ONCE]
    connector = ConnectorProcess(
        dsn, broker.bootstrap_servers, name, prefix, state_dir, tables=published_tables(), extra=extra,
        env={"CDC_RECONNECT_MAX_SECONDS": str(reconnect_max_seconds)}, format=format, producer=kind,
    )  # fmt: skip
    rng = random.Random(seed)
    return Chaos(server, dsn, broker, connector, Workload(dsn, seed, rate), rng, delivery)
