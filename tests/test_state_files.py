"""The state directory's files (offsets.json, snapshot.json): absent, unreadable, or from a newer cdc."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc.checkpoint import Offsets, OffsetStore
from cdc.errors import CheckpointError
from cdc.snapshot.state import SnapshotState, SnapshotStore

STORES: list[tuple[Any, str, Any, str]] = [
    (OffsetStore, "offsets.json", Offsets(), "fix or delete it (the slot keeps the server's position)"),
    (SnapshotStore, "snapshot.json", SnapshotState(), "fix it, or delete it to forget snapshot progress"),
]


@pytest.mark.parametrize(("store", "name", "empty", "fix"), STORES)
def test_absent_file_is_a_fresh_start(tmp_path: Path, store: Any, name: str, empty: Any, fix: str) -> None:
    assert store(tmp_path).load() == empty


@pytest.mark.parametrize(("store", "name", "empty", "fix"), STORES)
def test_unreadable_file_names_itself_and_the_fix(
    tmp_path: Path, store: Any, name: str, empty: Any, fix: str
) -> None:
    (tmp_path / name).write_bytes(b"{not json")
    with pytest.raises(CheckpointError) as info:
        store(tmp_path).load()
    message = str(info.value)
    assert message.startswith(f"cannot read {tmp_path / name}: ") and message.endswith(fix)


@pytest.mark.parametrize(("store", "name", "empty", "fix"), STORES)
def test_file_of_a_newer_cdc_is_refused(tmp_path: Path, store: Any, name: str, empty: Any, fix: str) -> None:
    (tmp_path / name).write_bytes(orjson.dumps({"version": 99}))
    with pytest.raises(CheckpointError, match="written by a newer cdc \\(state version 99\\): upgrade cdc"):
        store(tmp_path).load()
