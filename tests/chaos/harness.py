"""The pieces a fault needs: a real `cdc start` process, positions, memory, a shaped link, a small disk.

Nothing here is pytest-specific, so that the test cases and ``make soak``
drive the same code.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psycopg

from cdc.devservers import Broker, free_port, tansu_binary
from cdc.lsn import parse_lsn
from tests.pipeline import cdc

T = TypeVar("T")

#: Timeouts a broker outage of a few seconds stays within, so the session outlives it, but short
#: enough that a producer stuck after the broker came back empty fails its session in seconds, not
#: the default two minutes (librdkafka waits out message.timeout.ms when Tansu re-creates the topics).
OUTLIVING_PRODUCER = {
    "kafka-python": {"delivery_timeout_ms": "8000", "request_timeout_ms": "3000", "max_block_ms": "6000"},
    "confluent": {"message.timeout.ms": "5000", "socket.timeout.ms": "2500"},
}


class ChaosTimeout(AssertionError):
    """A condition did not come true in time."""


def wait_for(condition: Callable[[], T | None], timeout: float, message: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; raise `ChaosTimeout` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ChaosTimeout(f"timed out after {timeout:g} s waiting for {message}")
        time.sleep(interval)


# -- positions --------------------------------------------------------------------------------


def scalar(dsn: str, query: str, params: Any = None) -> Any:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def current_wal(dsn: str) -> int:
    return parse_lsn(str(scalar(dsn, "SELECT pg_current_wal_lsn()::text")))


def slot_confirmed(dsn: str, slot: str) -> int:
    text = scalar(
        dsn, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    )
    return parse_lsn(text) if text else 0


def slot_active_pid(dsn: str, slot: str) -> int | None:
    pid = scalar(dsn, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    return int(pid) if pid is not None else None


# -- memory -----------------------------------------------------------------------------------


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB: the resident set now and its peak."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


# -- the connector as users run it ------------------------------------------------------------


@dataclass
class ConnectorProcess:
    """`cdc start` as a child process (its own session), with a log file per run.

    The DSN goes through ``CDC_DSN`` so that the password is not on a command line.
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
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def instance_dir(self) -> Path:
        return self.state_dir / self.name

    @property
    def slot(self) -> str:
        return f"cdc_{self.name}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def args(self) -> list[str]:
        args = [
            "start", "--name", self.name, "--bootstrap-servers", self.bootstrap,
            "--topic-prefix", self.prefix, "--state-dir", str(self.state_dir), "--format", self.format,
            "--producer", self.producer, "--snapshot", self.snapshot, "--status-interval", "0.2",
        ]  # fmt: skip
        if self.tables:
            args += ["--tables", ",".join(self.tables)]
        return args + self.extra

    def start(self, wait: bool = True) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.runs += 1
        log_dir = self.state_dir.parent / f"{self.name}-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"run{self.runs}.log"
        self.logs.append(log_path)
        with contextlib.suppress(FileNotFoundError):
            (self.instance_dir / "status.json").unlink()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_") or k.startswith("CDC_TEST_")}
        env.update(self.env, CDC_DSN=self.dsn)
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cdc", *self.args()],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        if wait:
            self.wait_state("running", timeout=60)

    def status(self) -> dict[str, Any]:
        try:
            status: dict[str, Any] = orjson.loads((self.instance_dir / "status.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return status

    def snapshot_state(self) -> dict[str, Any]:
        """``snapshot.json``: the initial snapshot's consistent point, phase and chunks done."""
        try:
            state: dict[str, Any] = orjson.loads((self.instance_dir / "snapshot.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return state

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_state(self, *states: str, timeout: float = 60, sessions: int = 0) -> dict[str, Any]:
        """Until status.json of this process shows one of ``states`` (and at least ``sessions``)."""

        def reached() -> dict[str, Any] | None:
            if not self.alive():
                raise AssertionError(f"the connector exited ({self.returncode()}): {self.last_lines()}")
            status = self.status()
            if (
                status.get("pid") == self.pid
                and status.get("state") in states
                and int(status.get("sessions") or 0) >= sessions
            ):
                return status
            return None

        return wait_for(reached, timeout, f"connector state {'/'.join(states)} (sessions >= {sessions})")

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """`cdc stop` (SIGTERM through the pid file) and wait for the process."""
        result = cdc(
            "stop", "--name", self.name, "--state-dir", str(self.state_dir), "--timeout", str(timeout)
        )
        if self.proc is not None:
            self.proc.wait(timeout)
        return result

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def last_lines(self, n: int = 5) -> str:
        if not self.logs:
            return ""
        lines = self.logs[-1].read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-n:])

    def cleanup(self) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def caught_up(self, target: int) -> bool:
        """Has this connector confirmed ``target`` (in the slot)? Raises if it died."""
        if not self.alive():
            raise AssertionError(f"the connector exited ({self.returncode()}): {self.last_lines()}")
        return slot_confirmed(self.dsn, self.slot) >= target


# -- a broker behind a link we can slow down ---------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, text=True, timeout=30)


class LinkUnavailable(Exception):
    """This machine does not let us build or shape a network link (no root, no tbf)."""


@dataclass
class ShapedBroker(Broker):
    """Tansu in a network namespace of its own, reached over a veth pair whose traffic we can shape.

    Only this pair is shaped (``tc ... tbf``: a low rate, a short queue, so
    packets are delayed and dropped), never the loopback device other
    processes share. The kernel here has no ``netem``; ``tbf`` is enough for
    a slow, lossy link. `start`/`stop`/`pause` work as for `Broker`.
    """

    namespace: str = ""
    host_if: str = ""
    peer_if: str = ""
    address: str = ""
    shaped: bool = False

    @classmethod
    def create_shaped(cls, base_dir: Path) -> ShapedBroker:
        if os.geteuid() != 0:
            raise LinkUnavailable("shaping a link needs root (ip netns, tc)")
        suffix = secrets.token_hex(3)
        base_dir.mkdir(parents=True, exist_ok=True)
        broker = cls(base_dir, binary=tansu_binary())
        broker.namespace = f"cdcchaos{suffix}"
        broker.host_if, broker.peer_if = f"cc{suffix}h", f"cc{suffix}p"
        octet, quad = secrets.randbelow(250) + 1, secrets.randbelow(63) * 4
        host_ip, broker.address = f"10.213.{octet}.{quad + 1}", f"10.213.{octet}.{quad + 2}"
        try:
            _ip("netns", "add", broker.namespace)
            _ip("link", "add", broker.host_if, "type", "veth", "peer", "name", broker.peer_if)
            _ip("link", "set", broker.peer_if, "netns", broker.namespace)
            _ip("addr", "add", f"{host_ip}/30", "dev", broker.host_if)
            _ip("link", "set", broker.host_if, "up")
            ns = ["netns", "exec", broker.namespace, "ip"]
            _ip(*ns, "addr", "add", f"{broker.address}/30", "dev", broker.peer_if)
            _ip(*ns, "link", "set", broker.peer_if, "up")
            _ip(*ns, "link", "set", "lo", "up")
            # prove tbf works here before anyone relies on it
            _tc("qdisc", "add", "dev", broker.host_if, "root", "tbf", "rate", "1mbit", "burst", "16kb",
                "latency", "50ms")  # fmt: skip
            _tc("qdisc", "del", "dev", broker.host_if, "root")
        except (subprocess.CalledProcessError, OSError) as exc:
            broker.remove_link()
            detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
            raise LinkUnavailable(f"cannot build a shaped link: {detail}") from None
        return broker

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self, attempts: int = 3) -> None:
        if not self.port:
            self.port = free_port()  # any free number: the namespace has its own ports
        url = f"tcp://{self.address}:{self.port}"
        with self.log_path.open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, self.binary, "broker", "--listener-url", url,
                 "--advertised-listener-url", url],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )  # fmt: skip
        self.pid, self._proc = proc.pid, proc
        wait_for(lambda: self._reachable() or proc.poll() is not None, 15, f"the broker at {url}")
        if proc.poll() is not None:
            raise LinkUnavailable(f"the broker in {self.namespace} exited: see {self.log_path}")

    def _reachable(self) -> bool:
        import socket

        with contextlib.suppress(OSError), socket.create_connection((self.address, self.port), 0.2):
            return True
        return False

    def shape(self, rate: str = "200kbit", queue: str = "8kb") -> None:
        """Slow the link both ways to ``rate`` with a short queue (``queue`` bytes): excess packets drop."""
        for dev, ns in ((self.host_if, []), (self.peer_if, ["ip", "netns", "exec", self.namespace])):
            subprocess.run(
                [*ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "8kb",
                 "limit", queue],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
        self.shaped = True

    def unshape(self) -> None:
        for dev, ns in ((self.host_if, []), (self.peer_if, ["ip", "netns", "exec", self.namespace])):
            subprocess.run(
                [*ns, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True, timeout=30, check=False
            )
        self.shaped = False

    def remove_link(self) -> None:
        if self.namespace:
            subprocess.run(
                ["ip", "netns", "del", self.namespace], capture_output=True, timeout=30, check=False
            )
        if self.host_if:
            subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30, check=False)

    def destroy(self) -> None:
        self.stop()
        self.remove_link()


# -- a state directory that fails ----------------------------------------------------------------


class StateDirUnavailable(Exception):
    """This machine does not let us make a small or read-only filesystem (no root)."""


@contextlib.contextmanager
def small_filesystem(path: Path, size_kb: int = 1024) -> Iterator[Path]:
    """A tmpfs of ``size_kb`` mounted at ``path`` for the duration."""
    if os.geteuid() != 0:
        raise StateDirUnavailable("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise StateDirUnavailable(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory``; return the file that did it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk)
    return filler


def set_immutable(path: Path, on: bool) -> None:
    """``chattr +i``/``-i``: even root cannot create files in an immutable directory."""
    proc = subprocess.run(
        ["chattr", "+i" if on else "-i", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise StateDirUnavailable(f"chattr {'+i' if on else '-i'} {path} failed: {proc.stderr.strip()}")


def offsets_lsn(instance_dir: Path) -> int:
    data = orjson.loads((instance_dir / "offsets.json").read_bytes())
    return parse_lsn(data["lsn"]) if data.get("lsn") else 0
