"""The snapshot's progress lines when no terminal shows bars (pure: no server)."""

from __future__ import annotations

import logging

import pytest

from cdc.snapshot.progress import BAR_PER_TABLE_UP_TO, SnapshotProgress


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


def test_tables_read_and_not_yet_acknowledged_log_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    """A broker slow to acknowledge left 9,000 of 10,000 tables read and not done: a line each,
    every 10 s; now the first few and a count of the others."""
    progress = SnapshotProgress({f"s.t{i}": (0, 20) for i in range(100)}, interactive=False)
    for i in range(40):
        progress.advance(f"s.t{i}", 20)  # read, not yet done
    caplog.set_level(logging.INFO, logger="cdc.snapshot.progress")
    progress.next_log = 0.0
    progress.advance("s.t40", 20)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 + BAR_PER_TABLE_UP_TO + 1, lines
    assert lines[-1] == f"snapshot: {41 - BAR_PER_TABLE_UP_TO} more tables read, waiting for Kafka"
    progress.close()


def test_one_table_logs_its_own_line_only(caplog: pytest.LogCaptureFixture) -> None:
    progress = SnapshotProgress({"s.big": (0, 1000)}, interactive=False)
    caplog.set_level(logging.INFO, logger="cdc.snapshot.progress")
    progress.next_log = 0.0
    progress.advance("s.big", 100)
    assert [r.getMessage()[:32] for r in caplog.records] == ["snapshot s.big: 100 of ~1,000 ro"]
    progress.close()


def test_a_terminal_shows_one_bar_for_many_tables_and_one_per_table_being_read() -> None:
    """A bar per table of 10,000 filled no terminal: one bar for all, plus the tables being read."""
    progress = SnapshotProgress({f"s.t{i}": (0, 20) for i in range(1000)}, interactive=True)
    try:
        assert progress.bars is not None
        (summary,) = progress.bars.tasks
        assert summary.description == "0 of 1,000 tables" and summary.total == 20_000
        progress.advance("s.t1", 5)
        progress.advance("s.t2", 20)
        assert [t.description for t in progress.bars.tasks] == ["0 of 1,000 tables", "s.t1", "s.t2"]
        progress.table_done("s.t2", 20)
        assert [t.description for t in progress.bars.tasks] == ["1 of 1,000 tables", "s.t1"]
        assert progress.bars.tasks[0].completed == 25
    finally:
        progress.close()


def test_a_terminal_shows_a_bar_per_table_for_a_few() -> None:
    progress = SnapshotProgress({"s.a": (0, 10), "s.b": (5, 10)}, interactive=True)
    try:
        assert progress.bars is not None
        assert [(t.description, t.completed) for t in progress.bars.tasks] == [("s.a", 0), ("s.b", 5)]
    finally:
        progress.close()
