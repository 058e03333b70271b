"""The snapshot's progress lines when no terminal shows bars (pure: no server)."""

from __future__ import annotations

import logging

import pytest

from cdc.snapshot.progress import SnapshotProgress


def test_many_tables_log_a_summary_and_the_tables_being_read(caplog: pytest.LogCaptureFixture) -> None:
    """10,000 small tables once logged a line for every unfinished table every 10 s."""
    progress = SnapshotProgress({f"s.t{i}": (0, 20) for i in range(1000)}, interactive=False)
    progress.table_done("s.t0", 20)
    caplog.set_level(logging.INFO, logger="cdc.snapshot.progress")
    progress.next_log = 0.0  # the 10 s are up
    progress.advance("s.t1", 5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["snapshot: 1 of 1,000 tables done, 25 of ~20,000 rows", lines[1]]
    assert lines[1].startswith("snapshot s.t1: 5 of ~20 rows (25%)")
    progress.close()


def test_one_table_logs_its_own_line_only(caplog: pytest.LogCaptureFixture) -> None:
    progress = SnapshotProgress({"s.big": (0, 1000)}, interactive=False)
    caplog.set_level(logging.INFO, logger="cdc.snapshot.progress")
    progress.next_log = 0.0
    progress.advance("s.big", 100)
    assert [r.getMessage()[:32] for r in caplog.records] == ["snapshot s.big: 100 of ~1,000 ro"]
    progress.close()
