"""The connector's memory stays bounded by its producer buffer, not by the size of a transaction.

The full measurement (a 1M-row transaction, a broker down for a minute) is
``python -m tests.chaos.memory``; this is the cheap check of the suite: a
large transaction arrives while the broker hangs, so nothing drains the
producer and only the bound on its buffer keeps the connector from holding
the whole transaction.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cdc.devservers import Broker
from tests.chaos.verify import decoder, read_all, verify
from tests.chaos.workload import Workload, create_schema, published_tables
from tests.fix_servers import TestDb
from tests.support import ConnectorProcess, RssSampler, current_wal, rss_kb, wait_until

ROWS = 80_000
HANG_SECONDS = 3.0
#: Measured with the broker hanging through a 200,000-row transaction: +6 MiB (confluent) and
#: +8 MiB (kafka-python) with --max-buffer-mb 2, but +67 and +133 MiB with a buffer that holds it all
#: (so about +27 and +53 MiB for these 80,000 rows).
MAX_GROWTH_MB = 20


@pytest.mark.parametrize("producer", ["kafka-python", "confluent"])
def test_large_transaction_memory_is_bounded(
    db_latest: TestDb, own_broker: Broker, prefix: str, state_dir: Path, producer: str
) -> None:
    db = db_latest
    create_schema(db.dsn)
    workload = Workload(db.dsn, seed=11)
    connector = ConnectorProcess(
        db.dsn, own_broker.bootstrap_servers, "memory", prefix, state_dir, published_tables(),
        extra=["--max-buffer-mb", "2"], producer=producer,
    )  # fmt: skip
    connector.start()
    try:
        for _ in range(10):
            workload.step()
        workload.large_insert(10)  # every table's first event: topics and schemas exist before the hang
        target = current_wal(db.dsn)
        wait_until(lambda: connector.caught_up(target), 60, "the warm-up to be confirmed")
        baseline = rss_kb(connector.pid)[0]
        with RssSampler(connector.pid) as sampler:
            own_broker.pause()
            try:
                assert workload.large_insert(ROWS) is not None
                time.sleep(HANG_SECONDS)  # the hang is the load: the connector reads what its buffer allows
                hung_peak = sampler.peak_kb
            finally:
                own_broker.resume()
            target = current_wal(db.dsn)
            wait_until(lambda: connector.caught_up(target), 180, f"{ROWS} rows to be confirmed", interval=0.2)
        assert connector.stop().returncode == 0
    finally:
        connector.cleanup()
        workload.close()
    growth_mb = (max(hung_peak, sampler.peak_kb) - baseline) / 1024
    print(f"{producer}: RSS {baseline / 1024:.0f} MiB, +{growth_mb:.0f} MiB through a {ROWS}-row transaction")
    assert sampler.samples > 10
    assert growth_mb < MAX_GROWTH_MB, f"RSS grew {growth_mb:.0f} MiB for one {ROWS}-row transaction"
    decode = decoder(connector.format, own_broker.bootstrap_servers, prefix)
    report = verify(read_all(own_broker.bootstrap_servers, prefix), workload.ledger, decode)
    assert report.ok and report.changes_verified == report.changes_expected >= ROWS, report.summary()
