"""The pieces only a fault needs: a shaped link to the broker, a small or read-only state directory.

The connector process, positions, memory and waiting are `tests.support`'s.
Nothing here is pytest-specific, so that the test cases and ``make soak``
drive the same code.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from cdc.devservers import Broker, free_port, tansu_binary
from cdc.lsn import parse_lsn
from tests.support import wait_until

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
        wait_until(lambda: self._reachable() or proc.poll() is not None, 15, f"the broker at {url}")
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
