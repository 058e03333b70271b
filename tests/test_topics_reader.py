"""The tests' topic reader decides when a partition was read whole (tests/support/topics.py)."""

from __future__ import annotations

from tests.support.topics import _whole


def test_a_partition_is_whole_only_as_one_run_from_its_beginning() -> None:
    assert _whole([0, 1, 2], 0, 3)
    assert _whole([5, 6], 5, 7)  # compacted or deleted up to 5
    assert _whole([0, 1, 2, 3], 0, 3)  # Tansu's end, short of the true end
    assert _whole([], 4, 4)  # empty
    assert not _whole([1, 2], 0, 3)  # began past a record
    assert not _whole([0, 2], 0, 3)  # a hole (a skipped record, or a commit marker: read again)
    assert not _whole([0, 1], 0, 3)  # stopped short of the end
    assert not _whole([], 0, 2)  # holds records, none read
