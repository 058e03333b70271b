"""The pieces only a fault needs: a shaped link to the broker, a small or read-only state directory.

The connector process, positions, memory and waiting are `tests.support`'s.
Nothing here is pytest-specific, so that the test cases and ``make soak``
drive the same code.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from cdc.devservers import Broker, KafkaServer, free_port, tansu_binary
from cdc.lsn import parse_lsn
from tests.support import wait_until
from tests.support.brokers import KAFKA

# -- a broker behind a link we can slow down ---------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, text=True, timeout=30)


class LinkUnavailable(Exception):
    """This machine does not let us build or shape a network link (no root, no tbf)."""


@dataclass
class Link:
    """A network namespace of its own, reached over a veth pair whose traffic we can shape.

    Only this pair is shaped (``tc ... tbf``: a low rate, a short queue, so
    packets are delayed and dropped), never the loopback device other
    processes share. The kernel here has no ``netem``; ``tbf`` is enough for
    a slow, lossy link. A broker started under `prefix` listens on `address`.
    """

    namespace: str
    host_if: str
    peer_if: str
    address: str
    shaped: bool = False

    @classmethod
    def create(cls) -> Link:
        if os.geteuid() != 0:
            raise LinkUnavailable("shaping a link needs root (ip netns, tc)")
        suffix = secrets.token_hex(3)
        octet, quad = secrets.randbelow(250) + 1, secrets.randbelow(63) * 4
        host_ip = f"10.213.{octet}.{quad + 1}"
        link = cls(f"cdcchaos{suffix}", f"cc{suffix}h", f"cc{suffix}p", f"10.213.{octet}.{quad + 2}")
        try:
            _ip("netns", "add", link.namespace)
            _ip("link", "add", link.host_if, "type", "veth", "peer", "name", link.peer_if)
            _ip("link", "set", link.peer_if, "netns", link.namespace)
            _ip("addr", "add", f"{host_ip}/30", "dev", link.host_if)
            _ip("link", "set", link.host_if, "up")
            ns = ["netns", "exec", link.namespace, "ip"]
            _ip(*ns, "addr", "add", f"{link.address}/30", "dev", link.peer_if)
            _ip(*ns, "link", "set", link.peer_if, "up")
            _ip(*ns, "link", "set", "lo", "up")
            # prove tbf works here before anyone relies on it
            _tc("qdisc", "add", "dev", link.host_if, "root", "tbf", "rate", "1mbit", "burst", "16kb",
                "latency", "50ms")  # fmt: skip
            _tc("qdisc", "del", "dev", link.host_if, "root")
        except (subprocess.CalledProcessError, OSError) as exc:
            link.remove()
            detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
            raise LinkUnavailable(f"cannot build a shaped link: {detail}") from None
        return link

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.namespace]

    def shape(self, rate: str = "200kbit", queue: str = "8kb") -> None:
        """Slow the link both ways to ``rate`` with a short queue (``queue`` bytes): excess packets drop."""
        for dev, ns in ((self.host_if, []), (self.peer_if, self.prefix)):
            subprocess.run(
                [*ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "8kb",
                 "limit", queue],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
        self.shaped = True

    def unshape(self) -> None:
        for dev, ns in ((self.host_if, []), (self.peer_if, self.prefix)):
            subprocess.run(
                [*ns, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True, timeout=30, check=False
            )
        self.shaped = False

    def cut(self) -> None:
        """Drop every packet both ways (the connections stay open: a network partition)."""
        _ip("link", "set", self.host_if, "down")

    def mend(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=30, check=False)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30, check=False)


def _reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
        return True
    return False


@dataclass
class ShapedBroker(Broker):
    """Tansu inside a `Link`'s namespace. `start`/`stop`/`pause` work as for `Broker`."""

    link: Link | None = None

    @classmethod
    def create_shaped(cls, base_dir: Path) -> ShapedBroker:
        base_dir.mkdir(parents=True, exist_ok=True)
        return cls(base_dir, binary=tansu_binary(), link=Link.create())

    @property
    def address(self) -> str:
        assert self.link is not None
        return self.link.address

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self, attempts: int = 3) -> None:
        assert self.link is not None
        if not self.port:
            self.port = free_port()  # any free number: the namespace has its own ports
        url = f"tcp://{self.address}:{self.port}"
        with self.log_path.open("ab") as out:
            proc = subprocess.Popen(
                [*self.link.prefix, self.binary, "broker", "--listener-url", url,
                 "--advertised-listener-url", url],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )  # fmt: skip
        self.pid, self._proc = proc.pid, proc
        wait_until(
            lambda: _reachable(self.address, self.port) or proc.poll() is not None, 15, f"the broker at {url}"
        )
        if proc.poll() is not None:
            raise LinkUnavailable(f"the broker in {self.link.namespace} exited: see {self.log_path}")

    def destroy(self) -> None:
        self.stop()
        if self.link is not None:
            self.link.remove()


@dataclass
class ShapedKafka(KafkaServer):
    """Apache Kafka inside a `Link`'s namespace (its JVM run under ``ip netns exec``), data on disk."""

    link: Link | None = None

    @classmethod
    def create_shaped(cls, base_dir: Path) -> ShapedKafka:
        """`LinkUnavailable` without root or tbf; `KafkaUnavailable` without java (or mvn)."""
        link = Link.create()
        try:
            server = cls.create(base_dir)
        except BaseException:
            link.remove()
            raise
        assert isinstance(server, cls)  # KafkaServer.create builds a cls
        server.link = link
        server.host = link.address
        server.command_prefix = link.prefix
        # the namespace is new: every port in it is free (the launcher's free_ports would bind
        # in this namespace, where the address does not exist)
        server.ports = {"PLAINTEXT": 9092, "CONTROLLER": 9093}
        return server

    def destroy(self) -> None:
        super().destroy()
        if self.link is not None:
            self.link.remove()


Shaped = ShapedBroker | ShapedKafka


def link_of(broker: object) -> Link | None:
    """The shapeable link in front of ``broker``, if it is behind one."""
    return broker.link if isinstance(broker, ShapedBroker | ShapedKafka) else None


def create_shaped(kind: str, base_dir: Path) -> Shaped:
    """A broker of ``kind`` (`tests.support.brokers`) behind a shapeable link, not started."""
    if kind == KAFKA:
        return ShapedKafka.create_shaped(base_dir)
    return ShapedBroker.create_shaped(base_dir)


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
