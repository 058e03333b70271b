"""--log-format json, --log-level, and the log file rotated by size or followed for logrotate. No servers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from cdc import logs
from cdc.errors import ConfigError


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_the_structured_fields(tmp_path: Path) -> None:
    path = tmp_path / "cdc.log"
    logs.configure("json", "info", str(path))
    log = logging.getLogger("cdc.test")
    log.info("streaming %s", "slot", extra={"lsn": "0/16B3748", "table": "public.orders", "topic": "t.o"})
    log.debug("not written at info")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    entries = [orjson.loads(line) for line in path.read_text().splitlines()]
    assert [e["message"] for e in entries] == ["streaming slot", "failed"]
    first = entries[0]
    assert first["level"] == "info" and first["logger"] == "cdc.test" and first["ts"].endswith("+00:00")
    assert (first["lsn"], first["table"], first["topic"]) == ("0/16B3748", "public.orders", "t.o")
    assert "ValueError: boom" in entries[1]["exc"]
    assert logs.to_file()


def test_the_file_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "cdc.log"
    logs.configure("text", "info", str(path), max_mb=0.002, backups=2)  # about 2 KB
    log = logging.getLogger("cdc.test")
    for i in range(200):
        log.info("line %d of the rotating log", i)
    assert path.exists() and (tmp_path / "cdc.log.1").exists() and (tmp_path / "cdc.log.2").exists()
    assert not (tmp_path / "cdc.log.3").exists()
    assert path.stat().st_size <= 2100
    assert "line 199 of the rotating log" in path.read_text()


def test_without_a_size_the_file_is_reopened_after_logrotate_moves_it(tmp_path: Path) -> None:
    path = tmp_path / "cdc.log"
    logs.configure("text", "warning", str(path), max_mb=0)
    log = logging.getLogger("cdc.test")
    log.warning("before")
    log.info("below the level")
    path.rename(tmp_path / "cdc.log.1")  # what logrotate does
    log.warning("after")
    assert (tmp_path / "cdc.log.1").read_text().count("before") == 1
    assert "after" in path.read_text() and "below" not in path.read_text()


def test_an_unwritable_log_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write the log file"):
        logs.configure("text", "info", str(blocker / "cdc.log"))
