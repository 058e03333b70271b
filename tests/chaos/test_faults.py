"""Faults against real servers and a real `cdc start` process; the verifier proves nothing was lost.

Each case runs the workload in the background, strikes its fault
``CDC_CHAOS_ROUNDS`` times at random points of the stream (after a random
number of transactions, from the case's seed), then stops the workload, lets
the connector catch up, stops it with `cdc stop` and verifies every topic
against the ledger (`tests.chaos.verify`). After a kill -9 and before a
broker restart it also checks the invariant itself: everything the slot has
confirmed is already in Kafka.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from cdc.devservers import Broker, PostgresServer
from tests.chaos import harness
from tests.chaos.conftest import ROUNDS
from tests.chaos.faults import FAULTS, Chaos, FaultRecord, new_scene, start_with_snapshot
from tests.chaos.harness import StateDirUnavailable
from tests.chaos.verify import Report
from tests.chaos.workload import Workload
from tests.fix_servers import TestDb, new_db
from tests.support import wait_until


@pytest.fixture
def chaos_db(chaos_pg: PostgresServer) -> Iterator[TestDb]:
    db = new_db(chaos_pg)
    yield db
    db.drop()


def reached(workload: Workload, transactions: int) -> bool:
    return workload.transactions >= transactions


def play(scene: Chaos, fault: Callable[[Chaos], FaultRecord], rounds: int) -> Report:
    """Start everything, strike ``rounds`` times at random points, finish and verify."""
    try:
        scene.connector.start()
        scene.workload.start()
        scene.sample_lag()
        for _ in range(rounds):
            target = scene.workload.transactions + scene.rng.randint(10, 80)
            wait_until(partial(reached, scene.workload, target), 60, f"{target} workload transactions")
            fault(scene)
        return scene.finish()
    finally:
        scene.workload.close()
        scene.connector.cleanup()
        scene.stop_sampling()


def explain(scene: Chaos, report: Report, seed: int) -> str:
    faults = "; ".join(f"{f.name} at {f.at:.1f}s ({f.detail})" if f.detail else f"{f.name} at {f.at:.1f}s"
                       for f in scene.faults)  # fmt: skip
    return f"seed {seed}: {faults}\n{report.summary()}\nconnector log: {scene.connector.logs[-1]}"


@pytest.mark.parametrize(
    ("fault", "rounds"),
    [
        ("kill9", ROUNDS),
        ("kill9_large_txn", ROUNDS),  # 15,000 rows each, kafka-python
        ("stop_start", ROUNDS),
        ("pg_restart_fast", ROUNDS),
        ("pg_restart_immediate", ROUNDS),
        ("walsender_kill", ROUNDS),
        ("broker_restart", max(1, ROUNDS // 2)),  # each costs ~15 s: the producer's timeouts
        ("broker_pause", max(1, ROUNDS // 2)),
    ],
)
def test_fault(
    fault: str,
    rounds: int,
    chaos_pg: PostgresServer,
    chaos_db: TestDb,
    own_broker: Broker,
    chaos_prefix: str,
    state_dir: Path,
    chaos_seed: int,
) -> None:
    # kafka-python streams a large transaction slowly enough for the kill to land inside it
    producer = "kafka-python" if fault == "kill9_large_txn" else "auto"
    scene = new_scene(
        chaos_pg, chaos_db.dsn, own_broker, state_dir, chaos_prefix, "chaos", chaos_seed, producer=producer
    )
    scene.verify_checkpoints = True
    scene.large_rows = 15_000
    report = play(scene, FAULTS[fault], rounds)
    why = explain(scene, report, chaos_seed)
    assert report.ok, why
    assert len(scene.faults) == rounds, why
    assert report.changes_verified + report.lost_by_broker == report.changes_expected > 0, why
    assert report.aborted_checked > 0, why
    assert all(r.ok for r in scene.checkpoint_checks), why
    if fault == "stop_start":
        assert report.duplicates == 0, f"a graceful stop/start repeated events: {why}"
    if fault == "broker_restart":
        assert scene.horizon > 0, why
        assert report.lost_by_broker > 0, f"the broker restart lost nothing: did it happen? {why}"
    else:
        assert report.lost_by_broker == 0, why
    if fault.startswith("kill9"):
        assert len(scene.checkpoint_checks) == rounds, why
        assert all(f.landed for f in scene.faults), f"a kill missed its moment: {why}"


@pytest.mark.parametrize("producer", ["kafka-python", "confluent", "confluent-full-queue"])
def test_broker_blip_within_producer_timeouts(
    chaos_db: TestDb, own_broker: Broker, chaos_prefix: str, state_dir: Path, chaos_seed: int, producer: str
) -> None:
    """A broker back within the producer's timeouts, empty: the connector carries on by itself.

    (Both producers may then stay failed, kafka-python with UnknownProducerIdError, librdkafka with a
    fatal UNKNOWN_PRODUCER_ID: the session must end and a new one start, not the connector.) With a
    queue of 50 records the fatal error surfaces while waiting for room in it, not at a poll.
    """
    scene = new_scene(
        chaos_db.server, chaos_db.dsn, own_broker, state_dir, chaos_prefix, "chaos", chaos_seed,
        fast_failing=False, producer=producer.removesuffix("-full-queue"),
    )  # fmt: skip
    if producer.endswith("-full-queue"):
        scene.connector.extra += ["--producer-config", "queue.buffering.max.messages=50"]
    report = play(scene, FAULTS["broker_blip"], 1)
    why = explain(scene, report, chaos_seed)
    assert report.ok, why
    assert report.changes_verified + report.lost_by_broker == report.changes_expected > 0, why


def test_kill9_during_initial_snapshot(
    chaos_db: TestDb, own_broker: Broker, chaos_prefix: str, state_dir: Path, chaos_seed: int
) -> None:
    """kill -9 while the initial snapshot (cdc.snapshot) reads, the workload writing meanwhile; restart.

    Snapshot reads are real committed row states, not older than the consistent point, the stream
    holds exactly the transactions after it, and reads plus stream rebuild every table.
    """
    scene = new_scene(
        chaos_db.server, chaos_db.dsn, own_broker, state_dir, chaos_prefix, "chaos", chaos_seed,
        producer="kafka-python",  # the slower producer: the kill lands inside the snapshot
    )  # fmt: skip
    scene.connector.extra += ["--snapshot-workers", "1", "--snapshot-chunk-rows", "500"]
    for _ in range(150):
        scene.workload.step()
    assert scene.workload.large_insert(30_000) is not None
    try:
        start_with_snapshot(scene, kill_after_chunks=scene.rng.randint(3, 30))
        scene.sample_lag()
        target = scene.workload.transactions + scene.rng.randint(10, 80)
        wait_until(partial(reached, scene.workload, target), 60, f"{target} workload transactions")
        report = scene.finish()
    finally:
        scene.workload.close()
        scene.connector.cleanup()
        scene.stop_sampling()
    why = explain(scene, report, chaos_seed)
    assert report.ok and report.lost_by_broker == 0, why
    assert report.snapshot_reads >= 30_000 + 150, why
    assert report.changes_verified == report.changes_expected > 0, why
    assert [f.name for f in scene.faults] == ["kill -9 in the initial snapshot"], why


def test_slow_lossy_link(
    chaos_db: TestDb, shaped_broker: harness.ShapedBroker, chaos_prefix: str, state_dir: Path, chaos_seed: int
) -> None:
    scene = new_scene(
        chaos_db.server, chaos_db.dsn, shaped_broker, state_dir, chaos_prefix, "chaos", chaos_seed
    )
    report = play(scene, FAULTS["slow_link"], 1)
    why = explain(scene, report, chaos_seed)
    assert report.ok and report.lost_by_broker == 0, why
    assert report.changes_verified == report.changes_expected > 0, why


@pytest.mark.parametrize("fault", ["state_dir_full", "state_dir_read_only"])
def test_state_dir_fails(
    fault: str, chaos_db: TestDb, own_broker: Broker, chaos_prefix: str, tmp_path: Path, chaos_seed: int
) -> None:
    """A full or unwritable state directory: one-line error, exit 1, nothing confirmed past the file."""
    state = tmp_path / "small"
    with contextlib.ExitStack() as stack:
        try:
            if fault == "state_dir_full":
                stack.enter_context(harness.small_filesystem(state, size_kb=512))
            else:
                state.mkdir()
                harness.set_immutable(state, False)  # proves chattr works here before relying on it
        except StateDirUnavailable as exc:
            pytest.skip(f"{fault} cannot be staged here: {exc}")
        scene = new_scene(chaos_db.server, chaos_db.dsn, own_broker, state, chaos_prefix, "chaos", chaos_seed)
        report = play(scene, FAULTS[fault], ROUNDS)
    why = explain(scene, report, chaos_seed)
    assert report.ok and report.lost_by_broker == 0, why
    assert report.changes_verified == report.changes_expected > 0, why
    assert scene.connector.runs == ROUNDS + 1, why
