"""`cdc sink postgres` under the chaos workload: kill -9 of the sink and of the connector, and still
every committed change is applied to the target exactly once, in order, whole transactions whole.

The sink runs as ``python -m tests.sink_audit`` (the same sink, with `TableApplier`, recording each
change it applies in ``sink_audit`` of the target, in the same target transaction): after the
faults, ``sink_audit`` holds every change the workload committed once (``times`` = 1), each key's
changes in commit order, and with ``--transaction-metadata`` every source transaction in one target
transaction; and every table of the target equals the source's, row for row.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import psycopg
import pytest

from cdc.devservers import Broker, PostgresServer
from tests.chaos.faults import new_scene
from tests.chaos.workload import published_tables
from tests.fix_servers import TestDb, new_db
from tests.sinking import SinkProcess, wait_same
from tests.support import wait_until

FAULTS = ["sink", "connector", "sink", "large", "connector", "sink"]


@pytest.fixture
def source_and_target(chaos_pg: PostgresServer) -> Iterator[tuple[TestDb, TestDb]]:
    source, target = new_db(chaos_pg), new_db(chaos_pg)
    yield source, target
    source.drop()
    target.drop()


def progressed(scene_workload: object, target: int) -> bool:
    return int(getattr(scene_workload, "transactions", 0)) >= target


@pytest.mark.parametrize("whole", [True, False], ids=["whole-transactions", "change-by-change"])
def test_every_change_applied_once_through_kill_9(
    chaos_pg: PostgresServer,
    source_and_target: tuple[TestDb, TestDb],
    own_broker: Broker,
    chaos_prefix: str,
    state_dir: Path,
    tmp_path: Path,
    chaos_seed: int,
    whole: bool,
) -> None:
    source, target = source_and_target
    scene = new_scene(chaos_pg, source.dsn, own_broker, state_dir, chaos_prefix, "sinkchaos", chaos_seed)
    if whole:
        scene.connector.extra.append("--transaction-metadata")
    tables = published_tables()
    sink = SinkProcess(
        target.dsn,
        own_broker.bootstrap_servers,
        [f"{chaos_prefix}.{t}" for t in tables],
        tmp_path / "sink-logs",
        module="tests.sink_audit",
        env={
            "CDC_SINK_TOPIC_PREFIX": chaos_prefix,
            "CDC_SINK_TRANSACTION_METADATA": "true" if whole else "false",
            "CDC_SINK_BATCH_ROWS": "500",
            "CDC_SINK_BATCH_LINGER_MS": "100",
        },
    )
    struck: list[str] = []
    try:
        scene.connector.start()
        scene.workload.start()
        sink.start()
        for fault in FAULTS:
            goal = scene.workload.transactions + scene.rng.randint(20, 80)
            wait_until(partial(progressed, scene.workload, goal), 60, f"{goal} workload transactions")
            sink.check_alive()
            if fault == "sink":
                sink.kill9()
                sink.start()
            elif fault == "connector":
                scene.connector.kill9()
                scene.connector.start()
            else:  # a transaction larger than a batch, the sink killed while applying it
                assert scene.workload.large_insert(6_000) is not None
                time.sleep(scene.rng.uniform(0.3, 2.0))
                sink.kill9()
                sink.start()
            struck.append(f"{fault} at {scene.workload.transactions} transactions")
        scene.workload.halt()
        scene.caught_up()
        wait_same(source.dsn, target.dsn, tables, timeout=180, check=sink.check_alive)
        assert sink.stop() == 0, sink.last_lines()
    finally:
        scene.workload.close()
        scene.connector.cleanup()
        sink.cleanup()
    why = f"seed {chaos_seed}, faults {struck}, sink logs {sink.logs}"

    expected = sum(1 for t in scene.workload.ledger.committed for c in t.changes if c.table != "messages")
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        applied = conn.execute("SELECT count(*), coalesce(max(times), 0) FROM sink_audit").fetchone()
        assert applied == (expected, 1), f"{applied} (changes, most times one was applied); {why}"
        by_key: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
        for topic, key, lsn, order in conn.execute(
            "SELECT topic, key, commit_lsn, total_order FROM sink_audit ORDER BY seq"
        ):
            by_key[(topic, key)].append((lsn, order))
        out_of_order = [k for k, positions in by_key.items() if positions != sorted(positions)]
        assert out_of_order == [], f"changes applied out of commit order for {out_of_order[:5]}; {why}"
        split = conn.execute(
            "SELECT count(*) FROM (SELECT source_txn FROM sink_audit GROUP BY source_txn "
            "HAVING count(DISTINCT target_xid) > 1) AS s"
        ).fetchone()
        if whole:
            assert split == (0,), f"{split} source transactions split over target transactions; {why}"
    print(f"{expected} changes applied once each; {why}")
