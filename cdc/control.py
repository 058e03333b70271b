"""Running connectors as processes: one per name, found through the state directory.

``<state-dir>/<name>/`` holds ``cdc.pid`` (locked with flock for as long as
the connector runs, so a second ``cdc start`` with the same name refuses),
``status.json`` (rewritten every status interval, read by ``cdc status``),
``offsets.json`` (see `cdc.checkpoint`), with ``--detach`` ``cdc.log`` (the log, rotated) and
``cdc.out`` (what the process printed: a fatal error, a crash), and
``requests/``: what ``cdc snapshot`` asks of the running connector.

Light on purpose: ``cdc status``, ``cdc stop`` and ``cdc snapshot`` import this
module and nothing of the pipeline (no psycopg, no Kafka client).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import orjson

from cdc import redact
from cdc.checkpoint import write_atomic
from cdc.errors import AlreadyRunning, CheckpointError, ConfigError, ControlError, NotRunning
from cdc.status import LIVE_STATES, Status

log = logging.getLogger(__name__)


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


def status_writer(directory: Path, name: str) -> Callable[[Status], None]:
    """`Status.publish` for a connector process: rewrite ``status.json``.

    The status is informative; the offsets file is what must not fail
    silently, so a status that cannot be written is skipped.
    """
    path = directory / "status.json"

    def write(status: Status) -> None:
        payload = {"name": name, "pid": os.getpid(), "updated_at": time.time(), **status.as_dict()}
        with contextlib.suppress(CheckpointError):
            write_atomic(path, orjson.dumps(redact.redact_tree(payload), option=orjson.OPT_INDENT_2))

    return write


#: `cdc status` exit codes, for scripts and health checks (LSB-like).
EXIT_RUNNING, EXIT_FAILED, EXIT_NOT_RUNNING = 0, 1, 3


def read_status(directory: Path, name: str) -> dict[str, Any]:
    """The connector's last status. A process that is gone while its status still says it ran
    was ended without a word (kill -9, out of memory, power loss): its state is ``killed``."""
    pid = running_pid(directory)
    try:
        status: dict[str, Any] = orjson.loads((directory / "status.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        status = {"name": name}
    if pid is None:
        state = status.get("state")
        if state in LIVE_STATES:
            status["state"] = "killed"
            if status.get("snapshot", {}).get("phase") == "running":
                status["snapshot"]["phase"] = "interrupted"
        elif state not in ("stopped", "failed"):
            status["state"] = "unknown"  # never ran here
        status["pid"] = None
    else:
        status["pid"] = pid
    status.setdefault("slot", None)
    for key in ("received_lsn", "confirmed_lsn"):
        status.setdefault(key, None)
    status.setdefault("lag_bytes", None)
    status.setdefault("events_total", 0)
    status.setdefault("events_per_table", {})
    status.setdefault("last_error", "")
    return status


def status_exit_code(status: dict[str, Any]) -> int:
    """0 while it runs, 1 when it ended on an error or was killed, 3 when stopped or never run."""
    if status.get("pid"):
        return EXIT_RUNNING
    if status.get("state") in ("failed", "killed"):
        return EXIT_FAILED
    return EXIT_NOT_RUNNING


def install_signal_handlers(stop: threading.Event, stop_now: threading.Event) -> None:
    """SIGTERM / SIGINT set ``stop`` (graceful); a second one sets ``stop_now`` too (do not wait for
    the open transaction)."""

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            stop_now.set()
        stop.set()

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
    raise ControlError(
        f"connector {name!r} (pid {pid}) did not stop within {timeout:g} s: it is still flushing; "
        "wait, or kill it (it resumes from its last confirmed position)"
    )


def detach(
    argv: list[str], directory: Path, name: str, timeout: float = 60, log_path: Path | None = None
) -> int:
    """Run ``cdc start`` (``argv`` without --detach) in the background; return its pid once it streams.

    The connector writes its log itself (``log_path``, rotated); what the process prints
    (a fatal error line, a crash) goes to ``cdc.out``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    out_path = directory / "cdc.out"
    log_path = log_path or out_path
    with contextlib.suppress(OSError):
        (directory / "status.json").unlink()
    with open(out_path, "ab") as out_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdc", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ControlError(
                f"the connector exited at start: {_last_error(out_path) or _last_error(log_path)} "
                f"(log: {log_path})"
            )
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
    return ""


# -- requests to a running connector (`cdc snapshot`) ------------------------------------
#
# ``requests/<id>.request.json`` (atomic) asks; the connector looks there every status
# interval and answers ``<id>.result.json`` (accepted tables, rejected ones with the reason).


@dataclass(slots=True)
class RequestResult:
    accepted: list[str]
    rejected: dict[str, str]
    answered: bool  # False: the connector has not picked the request up yet


def request_snapshot(directory: Path, name: str, tables: list[str], timeout: float = 30.0) -> RequestResult:
    """Ask the running connector to snapshot ``tables`` incrementally; wait for its answer.

    Raises `NotRunning` when no connector with this name runs. When it does
    not answer within ``timeout`` (it picks requests up only while streaming,
    so not during its initial snapshot) the request stays queued.
    """
    if not tables:
        raise ConfigError("name at least one table: cdc snapshot schema.table ...")
    pid = running_pid(directory)
    if pid is None or pid <= 0:
        raise NotRunning(
            f"no connector named {name!r} is running (state dir {directory}): start it, then ask again"
        )
    request_id = f"{time.time_ns()}-{secrets.token_hex(4)}"
    requests = directory / "requests"
    path = requests / f"{request_id}.request.json"
    result = requests / f"{request_id}.result.json"
    write_atomic(path, orjson.dumps({"version": 1, "tables": tables, "requested_at": time.time()}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result.exists():
            try:
                answer = orjson.loads(result.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                raise CheckpointError(f"cannot read the connector's answer {result}: {exc}") from None
            result.unlink(missing_ok=True)
            return RequestResult(list(answer["accepted"]), dict(answer["rejected"]), True)
        time.sleep(0.05)
    return RequestResult([], {}, False)


def pending_requests(directory: Path) -> list[tuple[Path, list[str]]]:
    """The connector's side: the snapshot requests waiting, oldest first (malformed ones dropped)."""
    try:
        entries = sorted(os.scandir(directory / "requests"), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(".request.json"):
            continue
        path = Path(entry.path)
        try:
            found.append((path, [str(t) for t in orjson.loads(path.read_bytes())["tables"]]))
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring the malformed request %s", path)
            path.unlink(missing_ok=True)
    return found


def answer_request(path: Path, accepted: list[str], rejected: dict[str, str]) -> None:
    """Answer the request at ``path`` (from `pending_requests`) and remove it."""
    result = path.with_name(path.name.replace(".request.json", ".result.json"))
    write_atomic(result, orjson.dumps({"accepted": accepted, "rejected": rejected}))
    path.unlink(missing_ok=True)
