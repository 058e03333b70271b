"""Read a real slot in tests: what the walsender sends, frame by frame, decoded.

`SlotReader` wraps `cdc.replication.ReplicationConnection` (which applies the
session output settings the type parsers rely on) and keeps every XLogData
frame with its raw payload, so tests can assert on the bytes a real server
sent as well as on the decoded messages.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from cdc.pgoutput import (
    Commit,
    CommitPrepared,
    Decoder,
    Keepalive,
    Message,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    XLogData,
    decode_copy_data,
)
from cdc.replication import ReplicationConnection

#: Messages that end what the server sends for one transaction.
TRANSACTION_ENDS = (
    Commit,
    StreamCommit,
    StreamAbort,
    Prepare,
    StreamPrepare,
    CommitPrepared,
    RollbackPrepared,
)


@dataclass(slots=True)
class Captured:
    """One XLogData frame: its header, the raw pgoutput payload, the decoded message."""

    frame: XLogData
    message: Message

    @property
    def payload(self) -> bytes:
        return self.frame.payload


@dataclass
class SlotReader:
    """A pgoutput slot on a fresh walsender connection; a context manager.

    ``options`` are extra START_REPLICATION options (``streaming``, ``binary``,
    ``two_phase``...); ``conn_options`` go to the session (``-c name=value``).
    """

    dsn: str
    publication: str
    proto_version: int | None = None
    options: dict[str, str] = field(default_factory=dict)
    conn_options: str = ""
    messages: bool = True
    slot: str = field(default_factory=lambda: "s_" + secrets.token_hex(5))
    decoder: Decoder = field(default_factory=Decoder)
    captured: list[Captured] = field(default_factory=list)
    keepalives: list[Keepalive] = field(default_factory=list)
    repl: ReplicationConnection | None = None
    started: bool = False

    def __enter__(self) -> Self:
        dsn = self.dsn + (f" options='{self.conn_options}'" if self.conn_options else "")
        self.repl = ReplicationConnection(dsn, "cdc-tests")
        self.repl.create_slot(self.slot)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.repl is not None:
            self.repl.close()

    @property
    def conn(self) -> ReplicationConnection:
        assert self.repl is not None, "use SlotReader as a context manager"
        return self.repl

    def start(self) -> int:
        """START_REPLICATION from the slot's start; returns the protocol version."""
        self.started = True
        return self.conn.start(
            self.slot,
            self.publication,
            proto_version=self.proto_version,
            messages=self.messages,
            extra_options=self.options,
        )

    def read_until(self, done: Callable[[list[Captured]], bool], timeout: float = 30.0) -> list[Captured]:
        """Read frames until ``done(new frames)``; return the new XLogData frames, decoded."""
        if not self.started:
            self.start()
        new: list[Captured] = []
        deadline = time.monotonic() + timeout
        while not done(new):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                kinds = [type(c.message).__name__ for c in new]
                raise AssertionError(f"timed out after {timeout}s; got {kinds}")
            raw = self.conn.read(min(remaining, 1.0))
            if raw is None:
                continue
            copy = decode_copy_data(raw)
            if isinstance(copy, Keepalive):
                self.keepalives.append(copy)
                continue
            captured = Captured(copy, self.decoder.decode(copy.payload))
            new.append(captured)
            self.captured.append(captured)
        return new

    def read_transactions(self, count: int = 1, timeout: float = 30.0) -> list[Captured]:
        """Read until ``count`` transactions ended (Commit, Stream Commit/Abort, Prepare...)."""
        return self.read_until(
            lambda got: sum(isinstance(c.message, TRANSACTION_ENDS) for c in got) >= count, timeout
        )

    def read_through(
        self, cls: type[Message] | tuple[type[Message], ...], timeout: float = 30.0
    ) -> list[Captured]:
        """Read until a message of class ``cls`` arrives (it is the last one returned)."""
        return self.read_until(lambda got: bool(got) and isinstance(got[-1].message, cls), timeout)

    def read_keepalive(self, timeout: float = 30.0) -> Keepalive:
        """The next keepalive frame (data frames in between are decoded and kept)."""
        seen = len(self.keepalives)
        self.read_until(lambda _got: len(self.keepalives) > seen, timeout)
        return self.keepalives[seen]


def messages(captured: list[Captured]) -> list[Message]:
    return [c.message for c in captured]


def kinds(captured: list[Captured]) -> list[str]:
    return [type(c.message).__name__ for c in captured]


def kinds_once(captured: list[Captured]) -> list[str]:
    """`kinds` without the Relation messages the server sent again for a relation it already sent.

    pgoutput re-sends a relation's schema after any invalidation of its cache
    entry (autovacuum updating the table's statistics is enough), so how often
    it comes is the server's business; that it comes before the first change is not.
    """
    seen: set[int] = set()
    names = []
    for c in captured:
        message = c.message
        if isinstance(message, Relation):
            if message.relation_id in seen:
                continue
            seen.add(message.relation_id)
        names.append(type(message).__name__)
    return names
