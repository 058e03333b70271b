"""Helpers of the sink tests: a sink in a thread of the test, and tables compared row by row."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc.sink import Sink, SinkSettings
from cdc.sink.runner import Handler
from tests.support import wait_until


@dataclass
class SinkThread:
    sink: Sink
    thread: threading.Thread
    errors: list[BaseException]

    def check(self) -> None:
        if self.errors:
            raise self.errors[0]

    def stop(self, timeout: float = 60) -> None:
        self.sink.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the sink did not stop"
        self.check()


@contextlib.contextmanager
def sinking(settings: SinkSettings, handler: Handler | None = None) -> Iterator[SinkThread]:
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
    source: str, target: str, tables: list[str], sink: SinkThread | None = None, timeout: float = 60
) -> None:
    """Until every table of ``tables`` holds the same rows in the target as in the source."""

    def done() -> bool:
        if sink is not None:
            sink.check()
        try:
            return same_rows(source, target, tables)
        except psycopg.errors.UndefinedTable:
            return False

    try:
        wait_until(done, timeout, "the target to hold the source's rows")
    except AssertionError:
        for table in tables:
            with contextlib.suppress(psycopg.Error):
                a, b = rows(source, table), rows(target, table)
                diff = [(x, y) for x, y in zip(a, b, strict=False) if x != y][:5]
                print(
                    f"{table}: {len(a)} rows in the source, {len(b)} in the target; first differences {diff}"
                )
        raise


def scalar(dsn: str, query: str, params: Any = None) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]
