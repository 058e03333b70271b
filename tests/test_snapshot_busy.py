"""The initial snapshot of a busy database (writes, a TRUNCATE loop, a table rewrite) ends exact and
never stops the connector (`tests.snapshot_busy`; ``python -m tests.snapshot_busy --runs 20`` repeats it)."""

from __future__ import annotations

from pathlib import Path

from tests.fix_servers import BrokerHandle, TestDb
from tests.snapshot_busy import busy_snapshot


def test_snapshot_under_truncates_and_a_rewrite_is_exact(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    outcome = busy_snapshot(db, broker.bootstrap_servers, prefix, state_dir, seed=db.major)
    assert outcome.differences == []
    assert outcome.truncates > 0 and outcome.rewrites > 0, "the workload did not do what it should"
