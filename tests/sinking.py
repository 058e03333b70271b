"""Helpers of the sink tests: a sink in a thread of the test, and tables compared row by row."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cdc.sink import Sink, SinkSettings
from cdc.sink.runner import Handler
from tests.support import child_env, wait_until


@dataclass
class SinkThread:
    sink: Sink
    thread: threading.Thread
    errors: list[BaseException]

    def check(self) -> bool:
        """Raise the sink's error if it ended with one; False otherwise (for ``check() or condition``)."""
        if self.errors:
            raise self.errors[0]
        return False

    def stop(self, timeout: float = 60) -> None:
        self.sink.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the sink did not stop"
        self.check()


@contextlib.contextmanager
def sinking(
    settings: SinkSettings, handler: Handler | Callable[..., None] | None = None
) -> Iterator[SinkThread]:
    """A `Sink` running in a thread of the test; stopped on exit (its error raised)."""
    sink = Sink(settings, handler)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            sink.run()
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="sink", daemon=True)
    thread.start()
    handle = SinkThread(sink, thread, errors)
    try:
        yield handle
    finally:
        if thread.is_alive():
            handle.stop()


def rows(dsn: str, table: str, order: str = "1") -> list[str]:
    """Every row of ``table`` as Postgres prints it (its text output: exact for every type), in order."""
    schema, _, name = table.rpartition(".")
    with psycopg.connect(dsn, autocommit=True) as conn:
        query = sql.SQL("SELECT ROW(t.*)::text FROM {} AS t ORDER BY {}").format(
            sql.Identifier(schema or "public", name), sql.SQL(order)
        )
        return [r[0] for r in conn.execute(query).fetchall()]


def same_rows(source: str, target: str, tables: list[str], order: str = "1") -> bool:
    return all(rows(source, t, order) == rows(target, t, order) for t in tables)


def wait_same(
    source: str,
    target: str,
    tables: list[str],
    sink: SinkThread | None = None,
    timeout: float = 60,
    check: Callable[[], None] | None = None,
    names: dict[str, str] | None = None,
) -> None:
    """Until every table of ``tables`` holds the same rows in the target (under the name ``names``
    gives, else its own) as in the source (``check`` raises when what fills the target died)."""
    names = names or {}

    def done() -> bool:
        if sink is not None:
            sink.check()
        if check is not None:
            check()
        try:
            return all(rows(source, t) == rows(target, names.get(t, t)) for t in tables)
        except psycopg.errors.UndefinedTable:
            return False

    try:
        wait_until(done, timeout, "the target to hold the source's rows")
    except AssertionError:
        for table in tables:
            with contextlib.suppress(psycopg.Error):
                a, b = rows(source, table), rows(target, names.get(table, table))
                diff = [(x, y) for x, y in zip(a, b, strict=False) if x != y][:5]
                print(
                    f"{table}: {len(a)} rows in the source, {len(b)} in the target; first differences {diff}"
                )
        raise


def scalar(dsn: str, query: str, params: Any = None) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]


@dataclass
class SinkProcess:
    """A sink as a child process in its own session (``cdc sink postgres``, or ``tests.sink_audit``),
    with a log file per run; the target's DSN goes through ``CDC_SINK_DSN``, never the command line."""

    dsn: str
    bootstrap: str
    topics: list[str]
    log_dir: Path
    args: list[str] = field(default_factory=list)
    module: str = "cdc"  # tests.sink_audit: the same sink, recording what it applies
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def command(self) -> list[str]:
        if self.module == "cdc":
            return [sys.executable, "-m", "cdc", "sink", "postgres", *self.args]
        return [sys.executable, "-m", self.module]

    def start(self) -> None:
        assert not self.alive(), "already running"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"sink-run{len(self.logs) + 1}.log"
        self.logs.append(path)
        env = {
            "CDC_SINK_DSN": self.dsn,
            "CDC_BOOTSTRAP_SERVERS": self.bootstrap,
            "CDC_SINK_TOPICS": ",".join(self.topics),
            **self.env,
        }
        with open(path, "wb") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(env),
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"the sink exited ({self.proc and self.proc.poll()}): {self.last_lines()}")

    def kill9(self) -> None:
        assert self.proc is not None
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as a supervisor stops it: what is whole is committed first."""
        assert self.proc is not None
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.alive():
            self.kill9()

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def last_lines(self, n: int = 8) -> str:
        if not self.logs or not self.logs[-1].exists():
            return ""
        return " | ".join(self.logs[-1].read_text(errors="replace").strip().splitlines()[-n:])
