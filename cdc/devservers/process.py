"""Ports and processes, shared by the server launchers."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (another process may still take it before we do)."""
    return free_ports(1, host)[0]


def _ephemeral_low() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports: the sockets stay bound until all are picked.

    They come from below the ephemeral range: a port the kernel hands out itself may become the
    local port of some outgoing connection while its server is down for a restart, and the server
    could not come back on it (seen with two test processes: a broker restarted on a new port, its
    connector kept the old one)."""
    low = _ephemeral_low()
    rng = random.SystemRandom()
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(1000 if low > 11_000 else 0):
            port = rng.randrange(10_000, low)
            if port in ports:
                continue
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind((host, port))
            except OSError:
                continue
            ports.append(port)
            if len(ports) == count:
                return ports
        socks = [stack.enter_context(socket.socket()) for _ in range(count - len(ports))]
        for sock in socks:
            sock.bind((host, 0))
        return ports + [int(sock.getsockname()[1]) for sock in socks]


#: a restart waits this many times, 1 s apart, for its own port held by a closing socket
RESTART_ATTEMPTS = 10


def start_attempts(attempts: int, held: bool) -> Iterator[bool]:
    """Before each try at starting a server, whether to pick new ports.

    A first start moves to other ports when its pick was taken meanwhile. A
    restart (``held``: the server has ports, its clients know them) comes back
    on the same ones, waiting for them to be free, instead of moving where no
    client would find it."""
    for attempt in range(RESTART_ATTEMPTS if held else attempts):
        if held and attempt:
            time.sleep(1)
        yield not held


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return True
        time.sleep(0.05)
    return False


def log_tail(path: Path, lines: int = 3) -> str:
    """The last lines of a server log on one line, for an error message."""
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip().splitlines()
        return " | ".join(line.strip() for line in text[-lines:])
    return "(no log)"


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child of ours is reaped and counts as gone)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def send_signal(pid: int, sig: int) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def pause_process(pid: int, timeout: float = 5) -> None:
    """SIGSTOP, and wait until every thread has stopped.

    The signal is only queued when os.kill returns: a busy JVM thread can
    still answer a request for a moment, and a test that pauses a server
    must not see it do so.
    """
    send_signal(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not _all_stopped(pid):
        time.sleep(0.01)


def _all_stopped(pid: int) -> bool:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks]
    except OSError:
        return True  # gone, or no /proc: nothing to wait for
    return all(state in "TtZX" for state in states)


def running(pid: int, proc: subprocess.Popen[bytes] | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    return alive(pid)


def stop_process(pid: int, proc: subprocess.Popen[bytes] | None, grace: float) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` seconds; return once the process is gone.

    SIGCONT first: a paused (SIGSTOPped) server cannot act on SIGTERM. Returns
    whether it exited by itself within ``grace``.
    """
    send_signal(pid, signal.SIGCONT)
    send_signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and running(pid, proc):
        time.sleep(0.05)
    clean = not running(pid, proc)
    kill_process(pid, proc)
    return clean


def kill_process(pid: int, proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL (kill -9) and wait until the process is gone."""
    send_signal(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait()
    while alive(pid):
        time.sleep(0.02)
