"""Running connectors as processes: one per name, found through the state directory.

``<state-dir>/<name>/`` holds ``cdc.pid`` (locked with flock for as long as
the connector runs, so a second ``cdc start`` with the same name refuses),
``status.json`` (rewritten every status interval, read by ``cdc status``),
``offsets.json`` (see `cdc.checkpoint`) and, with ``--detach``, ``cdc.log``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import orjson

from cdc.checkpoint import write_atomic
from cdc.connector import Connector, Stats
from cdc.errors import CdcError, CheckpointError


class AlreadyRunning(CdcError):
    """Another process runs a connector with this name."""


class NotRunning(CdcError):
    """No connector with this name runs."""


class InstanceLock:
    """Hold ``cdc.pid`` locked while this process runs the connector."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.path = directory / "cdc.pid"
        self.file: IO[str] | None = None

    def __enter__(self) -> Self:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            file = open(self.path, "a+")
        except OSError as exc:
            raise CheckpointError(
                f"cannot use state directory {self.directory}: {exc.strerror}; fix --state-dir"
            ) from None
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            pid = file.read().strip() or "?"
            file.close()
            raise AlreadyRunning(
                f"connector {self.name!r} is already running (pid {pid}): "
                f"stop it with `cdc stop --name {self.name}` or choose another --name"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file = file
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


def running_pid(directory: Path) -> int | None:
    """The pid of the connector holding ``directory``'s lock, or None."""
    path = directory / "cdc.pid"
    try:
        file = open(path)  # noqa: SIM115
    except OSError:
        return None
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = file.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(file, fcntl.LOCK_UN)
        return None


class StatusFile:
    """Writes ``status.json`` whenever the connector reports."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / "status.json"
        self.name = name
        self.failed = False

    def __call__(self, stats: Stats) -> None:
        payload = {"name": self.name, "pid": os.getpid(), "updated_at": time.time(), **stats.as_dict()}
        try:
            write_atomic(self.path, orjson.dumps(payload, option=orjson.OPT_INDENT_2))
        except CheckpointError:
            # status is informative; the offsets file is what must not fail silently
            self.failed = True


def read_status(directory: Path, name: str) -> dict[str, Any]:
    pid = running_pid(directory)
    try:
        status: dict[str, Any] = orjson.loads((directory / "status.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        status = {"name": name}
    if pid is None:
        status["state"] = "stopped" if status.get("state") else "unknown"
        status["pid"] = None
    else:
        status["pid"] = pid
    status.setdefault("slot", None)
    for key in ("received_lsn", "confirmed_lsn"):
        status.setdefault(key, None)
    status.setdefault("lag_bytes", None)
    status.setdefault("events_total", 0)
    status.setdefault("events_per_table", {})
    return status


def install_signal_handlers(connector: Connector) -> None:
    """SIGTERM / SIGINT stop gracefully; a second one stops without finishing the open transaction."""

    def handler(signum: int, _frame: Any) -> None:
        if connector.stop.is_set():
            connector.stop_now.set()
        connector.stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def request_stop(directory: Path, name: str, timeout: float) -> int:
    """Ask the connector to stop and wait for it; return its pid."""
    pid = running_pid(directory)
    if pid is None or pid <= 0:
        raise NotRunning(f"no connector named {name!r} is running (state dir {directory})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid(directory) is None:
            return pid
        time.sleep(0.1)
    raise CdcError(
        f"connector {name!r} (pid {pid}) did not stop within {timeout:g} s: it is still flushing; "
        "wait, or kill it (it resumes from its last confirmed position)"
    )


def detach(argv: list[str], directory: Path, name: str, timeout: float = 60) -> int:
    """Run ``cdc start`` (``argv`` without --detach) in the background; return its pid once it streams."""
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "cdc.log"
    with contextlib.suppress(OSError):
        (directory / "status.json").unlink()
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdc", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CdcError(f"the connector exited at start: {_last_error(log_path)} (log: {log_path})")
        status = read_status(directory, name)
        started = ("running", "reconnecting", "snapshotting")
        if status.get("pid") == proc.pid and status.get("state") in started:
            return proc.pid
        time.sleep(0.1)
    return proc.pid


def _last_error(log_path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        for line in reversed(lines):
            if "error" in line.lower():
                return line.strip()
        if lines:
            return lines[-1].strip()
    return "no output"
