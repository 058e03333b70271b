"""The pgoutput logical replication protocol, versions 1 to 4: bytes in, messages out.

Pure: no I/O, no psycopg. `Decoder` keeps the only state the protocol needs
(the relation cache, whether a stream block is open). Field order and names
follow the PostgreSQL manual, "Logical Replication Message Formats" and
"Streaming Replication Protocol". Anything that does not parse raises
`DecodeError` naming the message kind and byte offset; nothing is skipped.
Also errors, not guesses: a change for a relation whose Relation message was
not seen, a tuple whose width differs from the cached relation's, a
transaction message inside a stream block.

Tuple values stay as the server sent them: ``None`` (null), `UNCHANGED`
(an unchanged TOASTed value the server did not send), ``bytes`` (text
format) or `Binary` (binary format). Converting them is `cdc.pgtypes`' job.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Final

from cdc.errors import DecodeError

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_BEGIN = struct.Struct(">QqI")  # final lsn, commit ts, xid
_COMMIT = struct.Struct(">BQQq")  # flags, commit lsn, end lsn, commit ts
_XLOGDATA = struct.Struct(">QQq")  # wal start, wal end, send time
_KEEPALIVE = struct.Struct(">QqB")  # wal end, send time, reply requested
_STATUS = struct.Struct(">cQQQqB")  # 'r', written, flushed, applied, send time, reply
_LSN_TS = struct.Struct(">QQq")  # lsn, end lsn, timestamp


class _Unchanged:
    """The server did not send this TOASTed value because it did not change."""

    __slots__ = ()
    _instance: ClassVar[_Unchanged | None] = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()


@dataclass(slots=True, frozen=True)
class Binary:
    """A column value in binary format (only sent when the ``binary`` option is on)."""

    data: bytes


ColumnValue = bytes | Binary | _Unchanged | None
TupleData = list[ColumnValue]


class Tag(IntEnum):
    """First byte of each pgoutput message."""

    BEGIN = ord("B")
    MESSAGE = ord("M")
    COMMIT = ord("C")
    ORIGIN = ord("O")
    RELATION = ord("R")
    TYPE = ord("Y")
    INSERT = ord("I")
    UPDATE = ord("U")
    DELETE = ord("D")
    TRUNCATE = ord("T")
    STREAM_START = ord("S")
    STREAM_STOP = ord("E")
    STREAM_COMMIT = ord("c")
    STREAM_ABORT = ord("A")
    BEGIN_PREPARE = ord("b")
    PREPARE = ord("P")
    COMMIT_PREPARED = ord("K")
    ROLLBACK_PREPARED = ord("r")
    STREAM_PREPARE = ord("p")


class ReplicaIdentity(IntEnum):
    DEFAULT = ord("d")
    NOTHING = ord("n")
    FULL = ord("f")
    INDEX = ord("i")


TRUNCATE_CASCADE: Final = 1
TRUNCATE_RESTART_IDENTITY: Final = 2


# -- messages -------------------------------------------------------------------------
# `xid` on Relation, Type, Message and change messages is set only inside a
# stream block (protocol >= 2): the xid of the (sub)transaction that made the
# change, as the server sends it. The top-level transaction is the enclosing
# StreamStart's xid; a StreamAbort whose subxid differs from its xid discards
# only that subtransaction's changes. Outside stream blocks it is None.


@dataclass(slots=True)
class Column:
    flags: int  # 1 = part of the replica identity key
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


@dataclass(slots=True)
class Relation:
    relation_id: int
    namespace: str  # the server sends "" for pg_catalog; kept as sent
    name: str
    replica_identity: int  # a ReplicaIdentity value
    columns: list[Column]
    xid: int | None = None


@dataclass(init=False, slots=True)
class Begin:
    final_lsn: int  # the commit LSN of the transaction
    commit_ts: int  # microseconds since 2000-01-01 UTC
    xid: int

    def __init__(self, final_lsn: int, commit_ts: int, xid: int) -> None:  # native: the note before Insert
        self.final_lsn = final_lsn
        self.commit_ts = commit_ts
        self.xid = xid


@dataclass(init=False, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int

    def __init__(self, flags: int, commit_lsn: int, end_lsn: int, commit_ts: int) -> None:
        self.flags = flags
        self.commit_lsn = commit_lsn
        self.end_lsn = end_lsn
        self.commit_ts = commit_ts


@dataclass(slots=True)
class Origin:
    commit_lsn: int  # the commit LSN on the origin server
    name: str


@dataclass(slots=True)
class Type:
    type_oid: int
    namespace: str
    name: str
    xid: int | None = None


@dataclass(slots=True)
class LogicalMessage:
    flags: int  # 1 = transactional
    lsn: int
    prefix: str
    content: bytes
    xid: int | None = None

    @property
    def transactional(self) -> bool:
        return bool(self.flags & 1)


# The per-row messages (Insert, Update, Delete) write their own __init__: compiled (mypyc), a
# dataclass's generated one is Python code, run once per row, where this one is native
# (`Decoder.decode_xlogdata` of the bench's stream of inserts: 0.69 -> 0.50 us). Begin and Commit
# too, once per transaction. The dataclass still gives them equality and repr.


@dataclass(init=False, slots=True)
class Insert:
    relation: Relation
    new: TupleData
    xid: int | None

    def __init__(self, relation: Relation, new: TupleData, xid: int | None = None) -> None:
        self.relation = relation
        self.new = new
        self.xid = xid


@dataclass(init=False, slots=True)
class Update:
    relation: Relation
    new: TupleData
    old: TupleData | None  # the old key ('K') or the whole old row ('O'), if sent
    old_kind: int  # ord('K'), ord('O') or 0
    xid: int | None

    def __init__(
        self,
        relation: Relation,
        new: TupleData,
        old: TupleData | None = None,
        old_kind: int = 0,
        xid: int | None = None,
    ) -> None:
        self.relation = relation
        self.new = new
        self.old = old
        self.old_kind = old_kind
        self.xid = xid


@dataclass(init=False, slots=True)
class Delete:
    relation: Relation
    old: TupleData
    old_kind: int  # ord('K') or ord('O')
    xid: int | None

    def __init__(self, relation: Relation, old: TupleData, old_kind: int, xid: int | None = None) -> None:
        self.relation = relation
        self.old = old
        self.old_kind = old_kind
        self.xid = xid


@dataclass(slots=True)
class Truncate:
    options: int  # TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY
    relations: list[Relation]
    xid: int | None = None

    @property
    def cascade(self) -> bool:
        return bool(self.options & TRUNCATE_CASCADE)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & TRUNCATE_RESTART_IDENTITY)


@dataclass(slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(slots=True)
class StreamStop:
    pass


@dataclass(slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int


@dataclass(slots=True)
class StreamAbort:
    xid: int
    subxid: int
    abort_lsn: int | None = None  # protocol 4 with streaming = parallel
    abort_ts: int | None = None


@dataclass(slots=True)
class BeginPrepare:
    prepare_lsn: int
    end_lsn: int
    prepare_ts: int
    xid: int
    gid: str


@dataclass(slots=True)
class Prepare:
    flags: int
    prepare_lsn: int
    end_lsn: int
    prepare_ts: int
    xid: int
    gid: str


@dataclass(slots=True)
class CommitPrepared:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int
    xid: int
    gid: str


@dataclass(slots=True)
class RollbackPrepared:
    flags: int
    prepare_end_lsn: int
    rollback_end_lsn: int
    prepare_ts: int
    rollback_ts: int
    xid: int
    gid: str


@dataclass(slots=True)
class StreamPrepare:
    flags: int
    prepare_lsn: int
    end_lsn: int
    prepare_ts: int
    xid: int
    gid: str


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | LogicalMessage
    | Insert
    | Update
    | Delete
    | Truncate
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
    | BeginPrepare
    | Prepare
    | CommitPrepared
    | RollbackPrepared
    | StreamPrepare
)


# -- the replication stream's CopyData frames ---------------------------------------


@dataclass(slots=True)
class XLogData:
    wal_start: int
    wal_end: int
    send_time: int
    payload: bytes


@dataclass(slots=True)
class Keepalive:
    wal_end: int
    send_time: int
    reply_requested: bool


#: The first byte of an XLogData frame ('w'); anything else on the stream is a keepalive ('k').
XLOGDATA: Final = 0x77
KEEPALIVE: Final = 0x6B
_XLOG_HEADER = struct.Struct(">QQ")  # wal start, wal end (the send time is not needed)

#: Compiled by mypyc (the compiled build), indexing bytes is native: a column's length read byte by
#: byte costs less than `struct` (a call, a tuple); interpreted, `struct` is the cheaper of the two.
_NATIVE: Final = not __file__.endswith(".py")


def decode_copy_data(data: bytes | bytearray | memoryview) -> XLogData | Keepalive:
    """One CopyData frame of START_REPLICATION: XLogData ('w') or a keepalive ('k')."""
    if not data:
        raise DecodeError("empty CopyData frame", kind="CopyData", offset=0)
    frame = data if isinstance(data, bytes) else bytes(data)
    tag = frame[0]
    if tag == XLOGDATA:
        if len(frame) < 25:
            raise DecodeError(
                f"XLogData frame of {len(frame)} bytes, its header alone is 25",
                kind="XLogData",
                offset=len(frame),
            )
        start, end, sent = _XLOGDATA.unpack_from(frame, 1)
        return XLogData(start, end, sent, frame[25:])
    if tag == KEEPALIVE:
        if len(frame) != 18:
            raise DecodeError(f"keepalive of {len(frame)} bytes, expected 18", kind="Keepalive", offset=0)
        end, sent, reply = _KEEPALIVE.unpack_from(frame, 1)
        if reply > 1:
            raise DecodeError(f"reply-requested flag {reply}, expected 0 or 1", kind="Keepalive", offset=17)
        return Keepalive(end, sent, bool(reply))
    raise DecodeError(f"unknown CopyData frame type {tag:#04x}", kind="CopyData", offset=0)


def encode_standby_status(
    written: int, flushed: int, applied: int, send_time: int, reply_requested: bool = False
) -> bytes:
    """The Standby status update ('r') that confirms ``flushed`` to the slot.

    ``send_time`` is in microseconds since 2000-01-01 (see `cdc.lsn.PG_EPOCH_US`);
    ``reply_requested`` asks the server to answer at once with a keepalive.
    """
    return _STATUS.pack(b"r", written, flushed, applied, send_time, 1 if reply_requested else 0)


# -- the decoder ---------------------------------------------------------------------


@dataclass
class Decoder:
    """Turns pgoutput payloads into messages, keeping the relation cache.

    ``relations`` maps relation OIDs to the latest Relation message; ``types``
    the OIDs of non-built-in types to their Type message. ``in_stream`` is
    true between Stream Start and Stream Stop, where change messages carry the
    streamed transaction's xid (protocol >= 2). The decoder does not need to
    know the protocol version: every message is self-describing given that
    state (a Stream Abort carries its abort LSN and time exactly when it is
    25 bytes long, protocol 4 with ``streaming 'parallel'``).
    """

    relations: dict[int, Relation] = field(default_factory=dict)
    types: dict[int, Type] = field(default_factory=dict)
    in_stream: bool = False

    def decode(self, payload: bytes) -> Message:
        """Decode one message; raise `DecodeError` if it is malformed, unknown or out of place."""
        if not payload:
            raise DecodeError("empty message", kind="pgoutput", offset=0)
        if payload.__class__ is not bytes:
            payload = bytes(payload)
        tag = payload[0]
        handler = _HANDLERS.get(tag)
        if handler is None:
            raise DecodeError(f"unknown message type {tag:#04x}", kind="pgoutput", offset=0)
        try:
            if tag == 0x49:  # Insert, the most common: a direct (compiled: native) call
                return self._insert(payload)
            return handler(self, payload)
        except (struct.error, IndexError, ValueError) as exc:
            if isinstance(exc, DecodeError):
                raise
            offset = _offset_of(exc, len(payload))
            raise DecodeError(f"malformed message: {exc}", kind=Tag(tag).name, offset=offset) from None

    def decode_xlogdata(self, frame: bytes) -> tuple[int, int, Message]:
        """An XLogData frame (first byte `XLOGDATA`) -> (wal start, wal end, its message).

        The stream's per-row path: no frame object, just the two positions and
        the decoded payload. A frame shorter than its header is a `DecodeError`.
        """
        if len(frame) < 25:
            raise DecodeError(
                f"XLogData frame of {len(frame)} bytes, its header alone is 25",
                kind="XLogData",
                offset=len(frame),
            )
        if _NATIVE:
            return _u64(frame, 1), _u64(frame, 9), self.decode(frame[25:])
        wal_start, wal_end = _XLOG_HEADER.unpack_from(frame, 1)
        return wal_start, wal_end, self.decode(frame[25:])

    # One handler per message, reading fields in protocol order. `pos` is the
    # offset of the next unread byte. The three change handlers inline their
    # helpers: they run once per row.

    def _xid(self, buf: bytes, pos: int) -> tuple[int | None, int]:
        """Int32 xid of the streamed transaction, present only inside a stream block."""
        if self.in_stream:
            return _U32.unpack_from(buf, pos)[0], pos + 4
        return None, pos

    def _outside_stream(self, kind: str) -> None:
        if self.in_stream:
            raise DecodeError("transaction message inside a stream block", kind=kind, offset=0)

    def _relation_for(self, relation_id: int, kind: str, pos: int) -> Relation:
        relation = self.relations.get(relation_id)
        if relation is None:
            raise DecodeError(
                f"change for relation {relation_id} before its Relation message", kind=kind, offset=pos
            )
        return relation

    def _begin(self, buf: bytes) -> Begin:
        self._outside_stream("BEGIN")
        _expect_len(buf, 21, "BEGIN")
        # Int64 final (commit) LSN, Int64 commit time, Int32 xid
        final_lsn, commit_ts, xid = _BEGIN.unpack_from(buf, 1)
        return Begin(final_lsn, commit_ts, xid)

    def _commit(self, buf: bytes) -> Commit:
        self._outside_stream("COMMIT")
        _expect_len(buf, 26, "COMMIT")
        # Int8 flags (unused), Int64 commit LSN, Int64 end LSN, Int64 commit time
        flags, commit_lsn, end_lsn, commit_ts = _COMMIT.unpack_from(buf, 1)
        return Commit(flags, commit_lsn, end_lsn, commit_ts)

    def _origin(self, buf: bytes) -> Origin:
        # Int64 commit LSN on the origin server, String origin name
        commit_lsn = _U64.unpack_from(buf, 1)[0]
        name, pos = _string(buf, 9, "ORIGIN")
        _expect_end(buf, pos, "ORIGIN")
        return Origin(commit_lsn, name)

    def _relation(self, buf: bytes) -> Relation:
        # [Int32 xid], Int32 relation OID, String namespace, String name,
        # Int8 replica identity, Int16 column count, then per column:
        # Int8 flags, String name, Int32 type OID, Int32 type modifier
        xid, pos = self._xid(buf, 1)
        relation_id = _U32.unpack_from(buf, pos)[0]
        namespace, pos = _string(buf, pos + 4, "RELATION")
        name, pos = _string(buf, pos, "RELATION")
        replica_identity = buf[pos]
        if replica_identity not in _IDENTITIES:
            raise DecodeError(
                f"unknown replica identity {replica_identity:#04x}", kind="RELATION", offset=pos
            )
        ncols = _I16.unpack_from(buf, pos + 1)[0]
        pos += 3
        if ncols < 0:
            raise DecodeError(f"negative column count {ncols}", kind="RELATION", offset=pos - 2)
        columns = []
        for _ in range(ncols):
            flags = buf[pos]
            col_name, pos = _string(buf, pos + 1, "RELATION")
            type_oid, typmod = _RELCOL.unpack_from(buf, pos)
            pos += 8
            columns.append(Column(flags, col_name, type_oid, typmod))
        _expect_end(buf, pos, "RELATION")
        relation = Relation(relation_id, namespace, name, replica_identity, columns, xid)
        self.relations[relation_id] = relation
        return relation

    def _type(self, buf: bytes) -> Type:
        # [Int32 xid], Int32 type OID, String namespace, String name
        xid, pos = self._xid(buf, 1)
        type_oid = _U32.unpack_from(buf, pos)[0]
        namespace, pos = _string(buf, pos + 4, "TYPE")
        name, pos = _string(buf, pos, "TYPE")
        _expect_end(buf, pos, "TYPE")
        message = Type(type_oid, namespace, name, xid)
        self.types[type_oid] = message
        return message

    def _message(self, buf: bytes) -> LogicalMessage:
        # [Int32 xid], Int8 flags, Int64 LSN, String prefix, Int32 length, Byte[n] content
        xid, pos = self._xid(buf, 1)
        flags = buf[pos]
        lsn = _U64.unpack_from(buf, pos + 1)[0]
        prefix, pos = _string(buf, pos + 9, "MESSAGE")
        length = _I32.unpack_from(buf, pos)[0]
        pos += 4
        if length < 0 or pos + length != len(buf):
            raise DecodeError(
                f"content length {length} does not match the {len(buf) - pos} bytes left",
                kind="MESSAGE",
                offset=pos - 4,
            )
        return LogicalMessage(flags, lsn, prefix, buf[pos:], xid)

    def _insert(self, buf: bytes) -> Insert:
        # [Int32 xid], Int32 relation OID, Byte1 'N', TupleData
        if self.in_stream:
            xid: int | None = _U32.unpack_from(buf, 1)[0]
            pos = 5
        else:
            xid = None
            pos = 1
        relation = self.relations.get(_u32(buf, pos) if _NATIVE else _U32.unpack_from(buf, pos)[0])
        if relation is None:
            raise _unknown_relation(buf, pos, "INSERT")
        if buf[pos + 4] != 0x4E:  # 'N'
            raise DecodeError(f"expected 'N', got {buf[pos + 4]:#04x}", kind="INSERT", offset=pos + 4)
        new, pos = _tuple(buf, pos + 5, "INSERT", len(relation.columns))
        if pos != len(buf):
            raise _trailing(buf, pos, "INSERT")
        return Insert(relation, new, xid)

    def _update(self, buf: bytes) -> Update:
        # [Int32 xid], Int32 relation OID, [Byte1 'K' or 'O', TupleData], Byte1 'N', TupleData
        if self.in_stream:
            xid: int | None = _U32.unpack_from(buf, 1)[0]
            pos = 5
        else:
            xid = None
            pos = 1
        relation = self.relations.get(_u32(buf, pos) if _NATIVE else _U32.unpack_from(buf, pos)[0])
        if relation is None:
            raise _unknown_relation(buf, pos, "UPDATE")
        pos += 4
        ncols = len(relation.columns)
        old = None
        old_kind = buf[pos]
        if old_kind == 0x4B or old_kind == 0x4F:  # 'K' or 'O'  # noqa: PLR1714 - faster than `in`
            old, pos = _tuple(buf, pos + 1, "UPDATE", ncols)
        else:
            old_kind = 0
        if buf[pos] != 0x4E:
            raise DecodeError(f"expected 'K', 'O' or 'N', got {buf[pos]:#04x}", kind="UPDATE", offset=pos)
        new, pos = _tuple(buf, pos + 1, "UPDATE", ncols)
        if pos != len(buf):
            raise _trailing(buf, pos, "UPDATE")
        return Update(relation, new, old, old_kind, xid)

    def _delete(self, buf: bytes) -> Delete:
        # [Int32 xid], Int32 relation OID, Byte1 'K' or 'O', TupleData
        if self.in_stream:
            xid: int | None = _U32.unpack_from(buf, 1)[0]
            pos = 5
        else:
            xid = None
            pos = 1
        relation = self.relations.get(_u32(buf, pos) if _NATIVE else _U32.unpack_from(buf, pos)[0])
        if relation is None:
            raise _unknown_relation(buf, pos, "DELETE")
        pos += 4
        old_kind = buf[pos]
        if old_kind != 0x4B and old_kind != 0x4F:  # noqa: PLR1714
            raise DecodeError(f"expected 'K' or 'O', got {old_kind:#04x}", kind="DELETE", offset=pos)
        old, pos = _tuple(buf, pos + 1, "DELETE", len(relation.columns))
        if pos != len(buf):
            raise _trailing(buf, pos, "DELETE")
        return Delete(relation, old, old_kind, xid)

    def _truncate(self, buf: bytes) -> Truncate:
        # [Int32 xid], Int32 relation count, Int8 options, Int32 relation OID per relation
        xid, pos = self._xid(buf, 1)
        count = _I32.unpack_from(buf, pos)[0]
        options = buf[pos + 4]
        pos += 5
        if count < 0 or pos + 4 * count != len(buf):
            raise DecodeError(
                f"relation count {count} does not match the message length", kind="TRUNCATE", offset=pos - 5
            )
        relations = [
            self._relation_for(rid, "TRUNCATE", pos + 4 * i)
            for i, rid in enumerate(struct.unpack_from(f">{count}I", buf, pos))
        ]
        return Truncate(options, relations, xid)

    def _stream_start(self, buf: bytes) -> StreamStart:
        # Int32 xid, Int8 1 if this is the transaction's first segment
        _expect_len(buf, 6, "STREAM_START")
        if self.in_stream:
            raise DecodeError("Stream Start inside an open stream block", kind="STREAM_START", offset=0)
        if buf[5] > 1:
            raise DecodeError(f"first-segment flag {buf[5]}, expected 0 or 1", kind="STREAM_START", offset=5)
        self.in_stream = True
        return StreamStart(_U32.unpack_from(buf, 1)[0], buf[5] == 1)

    def _stream_stop(self, buf: bytes) -> StreamStop:
        _expect_len(buf, 1, "STREAM_STOP")
        if not self.in_stream:
            raise DecodeError("Stream Stop without a Stream Start", kind="STREAM_STOP", offset=0)
        self.in_stream = False
        return StreamStop()

    def _stream_commit(self, buf: bytes) -> StreamCommit:
        # Int32 xid, Int8 flags (unused), Int64 commit LSN, Int64 end LSN, Int64 commit time
        self._outside_stream("STREAM_COMMIT")
        _expect_len(buf, 30, "STREAM_COMMIT")
        xid = _U32.unpack_from(buf, 1)[0]
        flags, commit_lsn, end_lsn, commit_ts = _COMMIT.unpack_from(buf, 5)
        return StreamCommit(xid, flags, commit_lsn, end_lsn, commit_ts)

    def _stream_abort(self, buf: bytes) -> StreamAbort:
        # Int32 xid, Int32 subtransaction xid, and with protocol 4 and
        # streaming = parallel: Int64 abort LSN, Int64 abort time
        self._outside_stream("STREAM_ABORT")
        if len(buf) == 9:
            xid, subxid = _XIDS.unpack_from(buf, 1)
            return StreamAbort(xid, subxid)
        _expect_len(buf, 25, "STREAM_ABORT")
        xid, subxid, abort_lsn, abort_ts = _ABORT.unpack_from(buf, 1)
        return StreamAbort(xid, subxid, abort_lsn, abort_ts)

    def _begin_prepare(self, buf: bytes) -> BeginPrepare:
        # Int64 prepare LSN, Int64 end LSN, Int64 prepare time, Int32 xid, String gid
        self._outside_stream("BEGIN_PREPARE")
        lsn, end_lsn, ts = _LSN_TS.unpack_from(buf, 1)
        xid = _U32.unpack_from(buf, 25)[0]
        gid, pos = _string(buf, 29, "BEGIN_PREPARE")
        _expect_end(buf, pos, "BEGIN_PREPARE")
        return BeginPrepare(lsn, end_lsn, ts, xid, gid)

    def _prepare_like(self, buf: bytes, kind: str) -> tuple[int, int, int, int, int, str]:
        # Int8 flags, Int64 LSN, Int64 end LSN, Int64 time, Int32 xid, String gid
        self._outside_stream(kind)
        flags = buf[1]
        lsn, end_lsn, ts = _LSN_TS.unpack_from(buf, 2)
        xid = _U32.unpack_from(buf, 26)[0]
        gid, pos = _string(buf, 30, kind)
        _expect_end(buf, pos, kind)
        return flags, lsn, end_lsn, ts, xid, gid

    def _prepare(self, buf: bytes) -> Prepare:
        return Prepare(*self._prepare_like(buf, "PREPARE"))

    def _commit_prepared(self, buf: bytes) -> CommitPrepared:
        return CommitPrepared(*self._prepare_like(buf, "COMMIT_PREPARED"))

    def _stream_prepare(self, buf: bytes) -> StreamPrepare:
        return StreamPrepare(*self._prepare_like(buf, "STREAM_PREPARE"))

    def _rollback_prepared(self, buf: bytes) -> RollbackPrepared:
        # Int8 flags, Int64 prepare end LSN, Int64 rollback end LSN,
        # Int64 prepare time, Int64 rollback time, Int32 xid, String gid
        self._outside_stream("ROLLBACK_PREPARED")
        flags = buf[1]
        prepare_end, rollback_end, prepare_ts, rollback_ts = _ROLLBACK.unpack_from(buf, 2)
        xid = _U32.unpack_from(buf, 34)[0]
        gid, pos = _string(buf, 38, "ROLLBACK_PREPARED")
        _expect_end(buf, pos, "ROLLBACK_PREPARED")
        return RollbackPrepared(flags, prepare_end, rollback_end, prepare_ts, rollback_ts, xid, gid)


_RELCOL = struct.Struct(">Ii")
_XIDS = struct.Struct(">II")
_ABORT = struct.Struct(">IIQq")
_ROLLBACK = struct.Struct(">QQqq")
_IDENTITIES = frozenset(int(r) for r in ReplicaIdentity)


def _expect_len(buf: bytes, size: int, kind: str) -> None:
    if len(buf) != size:
        raise DecodeError(f"length {len(buf)}, expected {size}", kind=kind, offset=min(len(buf), size))


def _expect_end(buf: bytes, pos: int, kind: str) -> None:
    if pos != len(buf):
        raise _trailing(buf, pos, kind)


def _trailing(buf: bytes, pos: int, kind: str) -> DecodeError:
    return DecodeError(f"{len(buf) - pos} unexpected trailing bytes", kind=kind, offset=pos)


def _unknown_relation(buf: bytes, pos: int, kind: str) -> DecodeError:
    relation_id = _U32.unpack_from(buf, pos)[0]
    return DecodeError(
        f"change for relation {relation_id} before its Relation message", kind=kind, offset=pos
    )


def _u32(buf: bytes, pos: int) -> int:
    """The UInt32 at ``pos`` (big-endian), byte by byte: for the compiled build (`_NATIVE`)."""
    return (buf[pos] << 24) | (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]


def _u64(buf: bytes, pos: int) -> int:
    """The UInt64 at ``pos`` (big-endian), byte by byte: for the compiled build (`_NATIVE`)."""
    n = 0
    for i in range(pos, pos + 8):
        n = (n << 8) | buf[i]
    return n


def _string(buf: bytes, pos: int, kind: str) -> tuple[str, int]:
    """A NUL-terminated string (UTF-8: the connection sets client_encoding)."""
    end = buf.find(b"\0", pos)
    if end < 0:
        raise DecodeError("unterminated string", kind=kind, offset=pos)
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int, kind: str, expected: int) -> tuple[TupleData, int]:
    """TupleData: Int16 column count, then per column a kind byte and maybe a value.

    The count must be the relation's: a tuple that does not line up with the
    cached columns would put values under the wrong names.
    """
    if _NATIVE and len(buf) >= pos + 2:
        ncols = (buf[pos] << 8) | buf[pos + 1]
        if ncols >= 0x8000:
            ncols -= 0x10000
    else:
        ncols = _I16.unpack_from(buf, pos)[0]
    if ncols != expected:
        raise DecodeError(f"tuple of {ncols} columns, the relation has {expected}", kind=kind, offset=pos)
    pos += 2
    values: TupleData = [None] * ncols
    unpack_len = _I32.unpack_from
    size = len(buf)
    for i in range(ncols):
        col_kind = buf[pos]
        if col_kind == 0x74:  # 't': text, Int32 length, Byte[n]
            if _NATIVE and pos + 5 <= size:
                length = _u32(buf, pos + 1)
                if length >= 0x80000000:
                    length -= 0x100000000  # Int32: negative, refused below
            else:
                length = unpack_len(buf, pos + 1)[0]
            pos += 5
            end = pos + length
            if length < 0 or end > size:
                raise DecodeError(f"column {i} length {length} beyond the message", kind=kind, offset=pos - 4)
            values[i] = buf[pos:end]
            pos = end
        elif col_kind == 0x6E:  # 'n': null
            pos += 1
        elif col_kind == 0x75:  # 'u': unchanged TOAST value, not sent
            values[i] = UNCHANGED
            pos += 1
        elif col_kind == 0x62:  # 'b': binary, Int32 length, Byte[n]
            length = unpack_len(buf, pos + 1)[0]
            pos += 5
            end = pos + length
            if length < 0 or end > size:
                raise DecodeError(f"column {i} length {length} beyond the message", kind=kind, offset=pos - 4)
            values[i] = Binary(buf[pos:end])
            pos = end
        else:
            raise DecodeError(f"unknown column kind {col_kind:#04x} in column {i}", kind=kind, offset=pos)
    return values, pos


def _offset_of(exc: Exception, size: int) -> int:
    """Byte offset for a struct error (struct names it), else the end of the message."""
    match = re.search(r"at offset (-?\d+)", str(exc))
    return int(match.group(1)) if match else size


_HANDLERS: dict[int, Callable[[Decoder, bytes], Message]] = {
    Tag.BEGIN: Decoder._begin,
    Tag.MESSAGE: Decoder._message,
    Tag.COMMIT: Decoder._commit,
    Tag.ORIGIN: Decoder._origin,
    Tag.RELATION: Decoder._relation,
    Tag.TYPE: Decoder._type,
    Tag.INSERT: Decoder._insert,
    Tag.UPDATE: Decoder._update,
    Tag.DELETE: Decoder._delete,
    Tag.TRUNCATE: Decoder._truncate,
    Tag.STREAM_START: Decoder._stream_start,
    Tag.STREAM_STOP: Decoder._stream_stop,
    Tag.STREAM_COMMIT: Decoder._stream_commit,
    Tag.STREAM_ABORT: Decoder._stream_abort,
    Tag.BEGIN_PREPARE: Decoder._begin_prepare,
    Tag.PREPARE: Decoder._prepare,
    Tag.COMMIT_PREPARED: Decoder._commit_prepared,
    Tag.ROLLBACK_PREPARED: Decoder._rollback_prepared,
    Tag.STREAM_PREPARE: Decoder._stream_prepare,
}
_HANDLERS = {int(tag): handler for tag, handler in _HANDLERS.items()}  # plain ints: faster lookup
