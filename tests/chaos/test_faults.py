"""Faults against real servers and a real `cdc start` process; the verifier proves nothing was lost.

Each case runs the workload in the background, strikes its fault
``CDC_CHAOS_ROUNDS`` times at random points of the stream (after a random
number of transactions, from the case's seed), then stops the workload, lets
the connector catch up, stops it with `cdc stop` and verifies every topic
against the ledger (`tests.chaos.verify`). After a kill -9 and before a
broker restart it also checks the invariant itself: everything the slot has
confirmed is already in Kafka.

Every case runs on Apache Kafka, whose restarts keep what it acknowledged:
nothing may be missing, ever. The cases marked ``tansu_subset`` run on Tansu
too, where a broker restart loses everything and the verifier excuses what
was confirmed before it (the loss horizon). `test_exactly_once` strikes a
mix of faults at ``--delivery exactly-once`` and allows no duplicate at all;
its at-least-once twin must see duplicates, or the faults did not land where
they could make any.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from cdc.devservers import PostgresServer
from tests.chaos import harness
from tests.chaos.conftest import ROUNDS
from tests.chaos.faults import (
    AT_LEAST_ONCE,
    EXACTLY_ONCE,
    FAULTS,
    Chaos,
    FaultRecord,
    new_scene,
    start_with_snapshot,
)
from tests.chaos.harness import StateDirUnavailable
from tests.chaos.verify import Report
from tests.chaos.workload import Workload
from tests.fix_servers import TestDb, new_db
from tests.support import wait_until
from tests.support.brokers import BrokerProcess

TANSU_TOO = pytest.mark.tansu_subset

#: one snapshot worker in 200-row chunks (~50 of them, each its own Kafka transaction), so the
#: snapshot spans several of snapshot.json's writes (every 0.5 s) and a kill after 3-15 chunks lands
#: inside it (with 500-row chunks a fast run once went from fewer than the drawn count to complete)
KILLABLE_SNAPSHOT = ["--snapshot-workers", "1", "--snapshot-chunk-rows", "200"]


@pytest.fixture
def chaos_db(chaos_pg: PostgresServer) -> Iterator[TestDb]:
    db = new_db(chaos_pg)
    yield db
    db.drop()


def reached(workload: Workload, transactions: int) -> bool:
    return workload.transactions >= transactions


def play(scene: Chaos, fault: Callable[[Chaos], FaultRecord], rounds: int) -> Report:
    """Start everything, strike ``rounds`` times at random points, finish and verify."""
    return play_all(scene, [fault] * rounds)


def play_all(scene: Chaos, faults: list[Callable[[Chaos], FaultRecord]], started: bool = False) -> Report:
    """Start everything (unless ``started``), strike each fault in turn at a random point, verify."""
    try:
        if not started:
            scene.connector.start()
            scene.workload.start()
        scene.sample_lag()
        for fault in faults:
            target = scene.workload.transactions + scene.rng.randint(10, 80)
            wait_until(partial(reached, scene.workload, target), 60, f"{target} workload transactions")
            fault(scene)
        return scene.finish()
    finally:
        scene.workload.close()
        scene.connector.cleanup()
        scene.stop_sampling()


def nothing_lost(scene: Chaos, report: Report, why: str) -> None:
    """On a durable broker (Apache Kafka) every committed change is there: no loss horizon."""
    if scene.durable:
        assert scene.horizon == 0 and report.lost_by_broker == 0, why
        assert report.changes_verified == report.changes_expected > 0, why


def explain(scene: Chaos, report: Report, seed: int) -> str:
    faults = "; ".join(f"{f.name} at {f.at:.1f}s ({f.detail})" if f.detail else f"{f.name} at {f.at:.1f}s"
                       for f in scene.faults)  # fmt: skip
    return f"seed {seed}: {faults}\n{report.summary()}\nconnector log: {scene.connector.logs[-1]}"


@pytest.mark.parametrize(
    ("fault", "rounds"),
    [
        pytest.param("kill9", ROUNDS, marks=TANSU_TOO),
        ("kill9_large_txn", ROUNDS),  # 15,000 rows each, kafka-python
        ("stop_start", ROUNDS),
        ("pg_restart_fast", ROUNDS),
        ("pg_restart_immediate", ROUNDS),
        ("walsender_kill", ROUNDS),
        # each costs 10-15 s: the producer's timeouts, the broker's restart
        pytest.param("broker_restart", ROUNDS, marks=TANSU_TOO),
        ("broker_kill9", ROUNDS),
        ("broker_pause", max(1, ROUNDS // 2)),
    ],
)
def test_fault(
    fault: str,
    rounds: int,
    chaos_pg: PostgresServer,
    chaos_db: TestDb,
    own_broker: BrokerProcess,
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
    if not report.ok and scene.durable and timeout_gap_only(scene, report):
        pytest.xfail(f"{TIMEOUT_GAP_REASON}: {why}")
    assert report.ok, why
    assert len(scene.faults) == rounds, why
    assert report.changes_verified + report.lost_by_broker == report.changes_expected > 0, why
    assert report.aborted_checked > 0, why
    assert all(r.ok for r in scene.checkpoint_checks), why
    if fault == "stop_start":
        assert report.duplicates == 0, f"a graceful stop/start repeated events: {why}"
    if scene.durable:
        nothing_lost(scene, report, why)
    elif fault in ("broker_restart", "broker_kill9"):  # Tansu comes back empty
        assert scene.horizon > 0, why
        assert report.lost_by_broker > 0, f"the broker restart lost nothing: did it happen? {why}"
    else:
        assert report.lost_by_broker == 0, why
    if fault.startswith("kill9"):
        assert len(scene.checkpoint_checks) == rounds, why
        assert all(f.landed for f in scene.faults), f"a kill missed its moment: {why}"


@pytest.mark.parametrize(
    "producer", ["kafka-python", "confluent", pytest.param("confluent-full-queue", marks=TANSU_TOO)]
)
def test_broker_blip_within_producer_timeouts(
    chaos_db: TestDb,
    own_broker: BrokerProcess,
    chaos_prefix: str,
    state_dir: Path,
    chaos_seed: int,
    producer: str,
) -> None:
    """A broker back within the producer's timeouts: the connector carries on by itself.

    Apache Kafka comes back with its data: nothing may be missing. Tansu comes back empty (both
    producers may then stay failed, kafka-python with UnknownProducerIdError, librdkafka with a
    fatal UNKNOWN_PRODUCER_ID: the session must end and a new one start, not the connector). With a
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
    nothing_lost(scene, report, why)


def test_kill9_during_initial_snapshot(
    chaos_db: TestDb, own_broker: BrokerProcess, chaos_prefix: str, state_dir: Path, chaos_seed: int
) -> None:
    """kill -9 while the initial snapshot (cdc.snapshot) reads, the workload writing meanwhile; restart.

    Snapshot reads are real committed row states, not older than the consistent point, the stream
    holds exactly the transactions after it, and reads plus stream rebuild every table.
    """
    scene = new_scene(
        chaos_db.server, chaos_db.dsn, own_broker, state_dir, chaos_prefix, "chaos", chaos_seed,
        producer="kafka-python",  # the slower producer: the kill lands inside the snapshot
    )  # fmt: skip
    scene.connector.extra += KILLABLE_SNAPSHOT
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
    chaos_db: TestDb,
    shaped_broker: harness.Shaped,
    chaos_prefix: str,
    state_dir: Path,
    chaos_seed: int,
    request: pytest.FixtureRequest,
) -> None:
    scene = new_scene(
        chaos_db.server, chaos_db.dsn, shaped_broker, state_dir, chaos_prefix, "chaos", chaos_seed
    )
    if scene.durable:
        request.applymarker(TIMEOUT_GAP)
    report = play(scene, FAULTS["slow_link"], 1)
    why = explain(scene, report, chaos_seed)
    assert report.ok and report.lost_by_broker == 0, why
    assert report.changes_verified == report.changes_expected > 0, why


@pytest.mark.parametrize("fault", ["state_dir_full", "state_dir_read_only"])
def test_state_dir_fails(
    fault: str,
    chaos_db: TestDb,
    own_broker: BrokerProcess,
    chaos_prefix: str,
    tmp_path: Path,
    chaos_seed: int,
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


#: A known limit, not hidden: at-least-once on Apache Kafka with the short producer timeouts these
#: cases use, a record that times out in the producer (message.timeout.ms / delivery_timeout_ms)
#: leaves a gap that later records of the same session pass, and the next session fills it from
#: the confirmed position: a key's older change then follows a newer one (or a delete its
#: tombstone's neighbour). README Limits has it; exactly-once is not affected.
TIMEOUT_GAP_REASON = (
    "known limit: a producer-side message timeout can leave a gap filled out of order by the "
    "next session (at-least-once on Apache Kafka; README Limits)"
)
TIMEOUT_GAP = pytest.mark.xfail(reason=TIMEOUT_GAP_REASON, strict=False)

#: what that gap leaves in a report: a delete whose tombstone the session lost (the next session sent
#: both again), or a key's older change after a newer one (and so the key's changes, all there, in
#: another order)
_GAP_MARKS = re.compile(
    r"delete of .+ without its tombstone|: not in commit order|, the same changes reordered$"
)


def timeout_gap_only(scene: Chaos, report: Report) -> bool:
    """Whether every violation is one the TIMEOUT_GAP limit leaves and a session did end on a
    producer-side message timeout (the other faults' cases must not fail this way: they are not
    marked, a broker kill -9 on Apache Kafka hit it once in CI)."""
    log = scene.connector.log_text()
    timed_out = "Message timed out" in log or "Expiring" in log
    return timed_out and all(_GAP_MARKS.search(v) for v in report.violations)


#: The faults of `test_exactly_once`, after a kill -9 inside the initial snapshot: the crashes
#: that leave a Kafka transaction open (kill -9 while streaming and inside a large transaction),
#: the broker's (stop and kill -9: the producer's transaction breaks), Postgres' and a clean stop.
EXACTLY_ONCE_FAULTS = [
    "kill9_large_txn", "broker_restart", "kill9", "pg_restart_immediate", "broker_kill9", "stop_start",
    "kill9_large_txn",
]  # fmt: skip


@pytest.mark.parametrize("delivery", [EXACTLY_ONCE, AT_LEAST_ONCE])
def test_exactly_once(
    delivery: str,
    chaos_pg: PostgresServer,
    chaos_db: TestDb,
    own_broker: BrokerProcess,
    chaos_prefix: str,
    state_dir: Path,
    chaos_seed: int,
    request: pytest.FixtureRequest,
) -> None:
    """``--delivery exactly-once`` under kill -9 (inside the snapshot, while streaming, inside large
    transactions), broker and Postgres restarts and a stop: a read_committed consumer sees every
    committed change once, zero duplicates. The same faults at at-least-once make duplicates, so
    the check can fail."""
    scene = new_scene(
        chaos_pg, chaos_db.dsn, own_broker, state_dir, chaos_prefix, "chaos", chaos_seed,
        producer="kafka-python", delivery=delivery,  # the slower producer: the kills land inside
    )  # fmt: skip
    if delivery == EXACTLY_ONCE and not scene.durable:
        pytest.skip("exactly-once needs Apache Kafka: Tansu's read_committed consumers see aborted records")
    if delivery == AT_LEAST_ONCE and scene.durable:
        request.applymarker(TIMEOUT_GAP)
    scene.verify_checkpoints = True
    scene.large_rows = 15_000
    scene.connector.extra += KILLABLE_SNAPSHOT
    for _ in range(150):
        scene.workload.step()
    assert scene.workload.large_insert(10_000) is not None
    try:
        start_with_snapshot(scene, kill_after_chunks=scene.rng.randint(3, 15))
    except BaseException:
        scene.workload.close()
        scene.connector.cleanup()
        raise
    report = play_all(scene, [FAULTS[name] for name in EXACTLY_ONCE_FAULTS], started=True)
    why = explain(scene, report, chaos_seed)
    assert len(scene.faults) == len(EXACTLY_ONCE_FAULTS) + 1, why
    assert all(f.landed for f in scene.faults), f"a kill missed its moment: {why}"
    assert report.ok, why  # at exactly-once, a duplicate is a violation
    assert all(r.ok for r in scene.checkpoint_checks), why
    assert report.aborted_checked > 0 and report.snapshot_reads >= 10_000 + 150, why
    nothing_lost(scene, report, why)
    if delivery == EXACTLY_ONCE:
        assert report.duplicates == 0, why
    else:
        assert report.duplicates > 0, f"no duplicates at at-least-once: the faults could not show any: {why}"
