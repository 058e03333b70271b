"""The three ways tests, the chaos suite and the benchmark run the connector.

- `cdc`: one `cdc ...` command run to completion (`error_line` reads its failure);
- `ConnectorProcess`: ``python -m cdc start`` as a long-running child process,
  observed through its status file, its slot and ``/proc``;
- `running`: the `Connector` in a thread of this process, for tests that look
  at its stats or logs directly.

A DSN never goes on a command line (``ps`` shows command lines to every
user of the machine): it goes through ``CDC_DSN`` in the child's environment.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cdc.config import Settings
from cdc.connector import Connector
from tests.support.positions import slot_confirmed
from tests.support.wait import wait_until

#: Producer settings that make a lost broker a failed session within seconds, so that tests see
#: the reconnect loop rather than two minutes of retries.
FAST_FAILING_PRODUCER = {
    "kafka-python": {
        "delivery_timeout_ms": "4000",
        "request_timeout_ms": "1500",
        "max_block_ms": "3000",
        "bootstrap_timeout_ms": "2000",
        "reconnect_backoff_max_ms": "500",
    },
    "confluent": {
        "message.timeout.ms": "4000",
        "socket.timeout.ms": "1500",
        "reconnect.backoff.max.ms": "500",
    },
}

#: Timeouts a broker outage of a few seconds stays within, so the session outlives it, but short
#: enough that a producer stuck after the broker came back empty fails its session in seconds, not
#: the default two minutes (librdkafka waits out message.timeout.ms when Tansu re-creates the topics).
#: The outage includes Apache Kafka's own start (a JVM), which took 6 s on a busy 2-core machine:
#: 5 s timeouts then expired inside the "blip" and the test saw the timeout gap it was not about.
OUTLIVING_PRODUCER = {
    "kafka-python": {"delivery_timeout_ms": "15000", "request_timeout_ms": "5000", "max_block_ms": "12000"},
    "confluent": {"message.timeout.ms": "15000", "socket.timeout.ms": "5000"},
}


def producer_config_args(config: Mapping[str, str]) -> list[str]:
    """``--producer-config key=value`` for each setting."""
    return [arg for key, value in config.items() for arg in ("--producer-config", f"{key}={value}")]


# -- a command run to completion ----------------------------------------------------------------

_URL_PASSWORD = re.compile(r"://[^/@:]*:[^/@]*@")


def _check_no_password(args: Sequence[str]) -> None:
    """A DSN with a password on a command line is readable by every user through ``ps``."""
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--dsn" and i + 1 < len(args) else arg.removeprefix("--dsn=")
        if (arg == "--dsn" or arg.startswith("--dsn=")) and (
            "password" in value or _URL_PASSWORD.search(value)
        ):
            raise AssertionError("a DSN with a password on a command line: pass it as CDC_DSN in env")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its ``CDC_*`` settings (``CDC_TEST_*`` stay), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_") or k.startswith("CDC_TEST_")}
    env.update(extra or {})
    return env


def cdc(
    *args: str, dsn: str | None = None, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cdc ARGS`` to completion, output captured.

    ``dsn`` goes to the child as ``CDC_DSN`` (never ``--dsn`` with a password:
    `AssertionError`); ``env`` adds to `child_env`.
    """
    _check_no_password(args)
    extra = {**(env or {}), **({"CDC_DSN": dsn} if dsn is not None else {})}
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=child_env(extra),
        check=False,
    )


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The failure as users see it: non-zero exit, one `cdc: error:` line, last, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("cdc: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


# -- `cdc start` as a child process -------------------------------------------------------------


class ConnectorExited(AssertionError):
    """The connector process ended while something waited for it."""


@dataclass
class ConnectorProcess:
    """``python -m cdc start`` as a child process in its own session, with a log file per run.

    The DSN goes through ``CDC_DSN``, so that no password is on a command
    line. Each `start` writes ``run<N>.log`` (stdout and stderr) in
    ``log_dir``, by default ``<state_dir>/../<name>-logs``. ``python`` is the
    interpreter and its options (the benchmark adds ``-m cProfile -o FILE``).
    """

    dsn: str
    bootstrap: str
    name: str
    prefix: str
    state_dir: Path
    tables: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    format: str = "avro"
    producer: str = "auto"
    snapshot: str = "never"
    status_interval: float = 0.2
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    python: list[str] = field(default_factory=lambda: [sys.executable])
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0
    logs: list[Path] = field(default_factory=list)
    started_at: float = 0.0  # wall clock just before the latest start

    @property
    def instance_dir(self) -> Path:
        return self.state_dir / self.name

    @property
    def slot(self) -> str:
        """The slot's name unless ``extra`` chose another with ``--slot``."""
        return f"cdc_{self.name}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def args(self) -> list[str]:
        """The ``cdc`` arguments of this connector (without the DSN, which is in the environment)."""
        args = [
            "start", "--name", self.name, "--bootstrap-servers", self.bootstrap,
            "--topic-prefix", self.prefix, "--state-dir", str(self.state_dir), "--format", self.format,
            "--producer", self.producer, "--snapshot", self.snapshot,
            "--status-interval", f"{self.status_interval:g}",
        ]  # fmt: skip
        if self.tables:
            args += ["--tables", ",".join(self.tables)]
        return args + self.extra

    def start(self, wait: bool = True, timeout: float = 60) -> None:
        """Start a new run; with ``wait``, until its status says it is streaming."""
        assert not self.alive(), "already running"
        args = self.args()
        _check_no_password(args)
        self.runs += 1
        log_dir = self.log_dir or self.state_dir.parent / f"{self.name}-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"run{self.runs}.log"
        self.logs.append(log_path)
        with contextlib.suppress(FileNotFoundError):
            (self.instance_dir / "status.json").unlink()
        self.started_at = time.time()
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [*self.python, "-m", "cdc", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env({**self.env, "CDC_DSN": self.dsn}),
                start_new_session=True,
            )
        if wait:
            self.wait_state("running", timeout=timeout)

    def status(self) -> dict[str, Any]:
        """``status.json`` as the connector last wrote it ({} before the first write)."""
        return _read_json(self.instance_dir / "status.json")

    def snapshot_state(self) -> dict[str, Any]:
        """``snapshot.json``: the initial snapshot's consistent point, phase and chunks done."""
        return _read_json(self.instance_dir / "snapshot.json")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def check_alive(self) -> None:
        """Raise `ConnectorExited` (with the end of its log) unless the process runs."""
        if not self.alive():
            raise ConnectorExited(f"the connector exited ({self.returncode()}): {self.last_lines()}")

    def wait_status(
        self,
        predicate: Callable[[dict[str, Any]], object],
        timeout: float = 60,
        message: str = "",
        interval: float = 0.05,
    ) -> dict[str, Any]:
        """Until this process's status satisfies ``predicate(status)``; that status.

        Raises `ConnectorExited` if the process ends first, `WaitTimeout` after ``timeout``.
        """

        def reached() -> dict[str, Any] | None:
            self.check_alive()
            status = self.status()
            return status if status.get("pid") == self.pid and predicate(status) else None

        return wait_until(reached, timeout, message or f"the status of connector {self.name}", interval)

    def wait_state(self, *states: str, timeout: float = 60, sessions: int = 0) -> dict[str, Any]:
        """Until the status shows one of ``states`` (and at least ``sessions`` sessions)."""
        return self.wait_status(
            lambda s: s.get("state") in states and int(s.get("sessions") or 0) >= sessions,
            timeout,
            f"connector state {'/'.join(states)} (sessions >= {sessions})",
        )

    def caught_up(self, target: int) -> bool:
        """Has the slot confirmed ``target``? Raises `ConnectorExited` if the process died."""
        self.check_alive()
        return slot_confirmed(self.dsn, self.slot) >= target

    def kill9(self) -> None:
        """SIGKILL, as a crash: nothing is flushed, confirmed or cleaned up."""
        assert self.proc is not None, "not started"
        if self.alive():  # never signal a pid that was already reaped (and may be reused)
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """`cdc stop` (SIGTERM through the pid file), as users stop it; then wait for the process."""
        result = cdc(
            "stop", "--name", self.name, "--state-dir", str(self.state_dir), "--timeout", str(timeout)
        )
        if self.proc is not None:
            self.proc.wait(timeout)
        return result

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        """SIGKILL if it still runs: for ``finally`` blocks, after a failure."""
        if self.alive():
            self.kill9()

    def log_text(self) -> str:
        """Every run's log, in order."""
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def _log_lines(self) -> list[str]:
        """The lines of the latest run's log (none before it wrote one)."""
        if not self.logs or not self.logs[-1].exists():
            return []
        return self.logs[-1].read_text(errors="replace").strip().splitlines()

    def last_lines(self, n: int = 5) -> str:
        """The last ``n`` lines of the latest run's log, joined with `` | ``."""
        return " | ".join(self._log_lines()[-n:])

    def last_warning(self) -> str:
        """The last WARNING or ERROR line of the latest run's log ("" without one): why a session
        restarted, when its last lines only show the next one at work."""
        lines = self._log_lines()
        return next((line for line in reversed(lines) if " WARNING " in line or " ERROR " in line), "")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data


# -- the connector in a thread of this process --------------------------------------------------


@dataclass
class Running:
    connector: Connector
    thread: threading.Thread
    errors: list[BaseException]

    def stop(self, timeout: float = 60) -> None:
        self.connector.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "connector did not stop"
        if self.errors:
            raise self.errors[0]


@contextlib.contextmanager
def running(settings: Settings, wait_streaming: bool = True) -> Iterator[Running]:
    """The connector in a thread of this process; stopped gracefully on exit."""
    connector = Connector(settings)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            connector.run()
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="connector", daemon=True)
    thread.start()
    handle = Running(connector, thread, errors)
    if wait_streaming:
        wait_until(
            lambda: connector.status.state == "running" or errors or not thread.is_alive(),
            timeout=60,
            message="the connector to start streaming",
        )
        if errors:
            raise errors[0]
    try:
        yield handle
    finally:
        if thread.is_alive():
            handle.stop()
