"""Golden tests: the bytes real walsenders send, decoded, with every field checked.

Each test runs on every Postgres version the harness finds. Expected values
come from the server itself (xids from pg_current_xact_id, LSNs returned by
pg_logical_emit_message and pg_current_wal_lsn, OIDs from regclass), so a
field decoded from the wrong offset cannot pass.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import psycopg
import pytest

from cdc.errors import DecodeError
from cdc.lsn import PG_EPOCH_US, parse_lsn
from cdc.pgoutput import (
    TRUNCATE_CASCADE,
    TRUNCATE_RESTART_IDENTITY,
    UNCHANGED,
    Begin,
    BeginPrepare,
    Binary,
    Column,
    Commit,
    CommitPrepared,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Prepare,
    Relation,
    ReplicaIdentity,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
)
from tests.fix_servers import TestDb
from tests.pgstream import Captured, SlotReader, kinds, kinds_once
from tests.support import wait_until

M = TypeVar("M")
SMALL_WORK_MEM = "-c logical_decoding_work_mem=64kB"


def now_pg_us() -> int:
    return int(time.time() * 1_000_000) - PG_EPOCH_US


def assert_recent(pg_ts: int) -> None:
    """A protocol timestamp (us since 2000-01-01) within two minutes of now."""
    assert abs(pg_ts - now_pg_us()) < 120_000_000, pg_ts


def only(captured: list[Captured], cls: type[M]) -> list[M]:
    return [c.message for c in captured if isinstance(c.message, cls)]


def one(captured: list[Captured], cls: type[M]) -> M:
    found = only(captured, cls)
    assert len(found) == 1, (cls.__name__, kinds(captured))
    return found[0]


def note(message: Message) -> bytes:
    """The second column of an Insert, as text bytes ('' for anything else)."""
    if isinstance(message, Insert) and isinstance(message.new[1], bytes):
        return message.new[1]
    return b""


def frame_of(captured: list[Captured], message: Message) -> Captured:
    return next(c for c in captured if c.message is message)


def oid(conn: psycopg.Connection[Any], regclass: str) -> int:
    row = conn.execute("SELECT %s::regclass::oid::int8", (regclass,)).fetchone()
    assert row is not None
    return int(row[0])


def scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def assert_transaction(captured: list[Captured], xid: int) -> tuple[Begin, Commit]:
    """Begin/Commit framing of one transaction, with the header fields checked."""
    begin, commit = captured[0].message, captured[-1].message
    assert isinstance(begin, Begin) and isinstance(commit, Commit), kinds(captured)
    assert begin.xid == xid
    assert begin.final_lsn == commit.commit_lsn
    assert commit.end_lsn > commit.commit_lsn
    assert commit.commit_ts == begin.commit_ts
    assert commit.flags == 0
    # the walsender stamps a commit's frame with the transaction's end LSN
    assert captured[-1].frame.wal_start == captured[-1].frame.wal_end == commit.end_lsn
    assert captured[0].frame.wal_start <= begin.final_lsn
    for c in captured:
        assert_recent(c.frame.send_time)
    return begin, commit


def test_dml_type_messages_keepalive_and_status(db: TestDb) -> None:
    conn = db.connect()
    conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, m mood, note text, big text, n numeric(10, 2))")
    conn.execute("ALTER TABLE t ALTER big SET STORAGE EXTERNAL")  # TOASTed out of line, uncompressed
    conn.execute("CREATE TABLE f (id int, x text)")
    conn.execute("ALTER TABLE f REPLICA IDENTITY FULL")
    conn.execute("CREATE PUBLICATION pub FOR TABLE t, f")
    mood, t_oid, f_oid = scalar(conn, "SELECT 'mood'::regtype::oid::int8"), oid(conn, "t"), oid(conn, "f")
    big = "x" * 10_000

    with SlotReader(db.dsn, "pub") as reader:
        reader.start()
        with conn.transaction():
            xid1 = int(scalar(conn, "SELECT pg_current_xact_id()::text"))
            conn.execute("INSERT INTO t VALUES (1, 'ok', 'a', %s, 1.5)", (big,))
            conn.execute("INSERT INTO f VALUES (7, 'é🐘')")
        with conn.transaction():
            xid2 = int(scalar(conn, "SELECT pg_current_xact_id()::text"))
            conn.execute("UPDATE t SET note = 'b' WHERE id = 1")  # big unchanged: not sent
            conn.execute("UPDATE t SET id = 2 WHERE id = 1")  # key change: old key sent
            conn.execute("UPDATE f SET x = NULL")
            conn.execute("DELETE FROM t")
            conn.execute("DELETE FROM f")
        plain_lsn = parse_lsn(scalar(conn, "SELECT pg_logical_emit_message(false, 'cdc', 'plain')::text"))
        with conn.transaction():
            xid3 = int(scalar(conn, "SELECT pg_current_xact_id()::text"))
            tx_lsn = parse_lsn(
                scalar(conn, "SELECT pg_logical_emit_message(true, 'cdc/tx', '\\x00ff0a'::bytea)::text")
            )
        got = reader.read_transactions(3)

        assert kinds(got) == [
            "Begin", "Type", "Relation", "Insert", "Relation", "Insert", "Commit",
            "Begin", "Update", "Update", "Update", "Delete", "Delete", "Commit",
            "LogicalMessage",
            "Begin", "LogicalMessage", "Commit",
        ]  # fmt: skip
        t1, t2, plain, t3 = got[:7], got[7:14], got[14], got[15:]
        _, commit1 = assert_transaction(t1, xid1)
        assert_transaction(t2, xid2)
        _, commit3 = assert_transaction(t3, xid3)

        type_message = one(t1, Type)
        assert type_message == Type(mood, "public", "mood", None)
        assert reader.decoder.types[mood] is type_message
        rel_t, rel_f = only(t1, Relation)
        n_typmod = (10 << 16 | 2) + 4
        assert rel_t == Relation(
            t_oid,
            "public",
            "t",
            ReplicaIdentity.DEFAULT,
            [
                Column(1, "id", 23, -1),
                Column(0, "m", mood, -1),
                Column(0, "note", 25, -1),
                Column(0, "big", 25, -1),
                Column(0, "n", 1700, n_typmod),
            ],
        )
        assert rel_f == Relation(
            f_oid, "public", "f", ReplicaIdentity.FULL, [Column(1, "id", 23, -1), Column(1, "x", 25, -1)]
        )
        assert [c.is_key for c in rel_t.columns] == [True, False, False, False, False]
        assert reader.decoder.relations == {t_oid: rel_t, f_oid: rel_f}
        # schema messages carry no WAL position; changes carry their record's
        for c in t1:
            if isinstance(c.message, (Type, Relation)):
                assert c.frame.wal_start == c.frame.wal_end == 0
            else:
                assert c.frame.wal_start == c.frame.wal_end > 0

        insert_t, insert_f = only(t1, Insert)
        assert insert_t == Insert(rel_t, [b"1", b"ok", b"a", big.encode(), b"1.50"], None)
        assert insert_f == Insert(rel_f, [b"7", "é🐘".encode()], None)

        note, key, full = only(t2, Update)
        assert note == Update(rel_t, [b"1", b"ok", b"b", UNCHANGED, b"1.50"], None, 0, None)
        assert key == Update(
            rel_t, [b"2", b"ok", b"b", UNCHANGED, b"1.50"], [b"1", None, None, None, None], ord("K"), None
        )
        assert full == Update(rel_f, [b"7", None], [b"7", "é🐘".encode()], ord("O"), None)
        delete_t, delete_f = only(t2, Delete)
        assert delete_t == Delete(rel_t, [b"2", None, None, None, None], ord("K"), None)
        assert delete_f == Delete(rel_f, [b"7", None], ord("O"), None)

        assert isinstance(plain.message, LogicalMessage)
        assert plain.message == LogicalMessage(0, plain_lsn, "cdc", b"plain", None)
        assert not plain.message.transactional
        assert plain.frame.wal_start == plain_lsn
        tx_message = one(t3, LogicalMessage)
        assert tx_message == LogicalMessage(1, tx_lsn, "cdc/tx", b"\x00\xff\n", None)
        assert tx_message.transactional

        # idle and unconfirmed: the walsender pings with its position
        keepalive = reader.read_keepalive()
        assert keepalive.wal_end >= commit3.end_lsn
        assert_recent(keepalive.send_time)
        assert keepalive.reply_requested is False

        # a status update confirms the slot up to commit1, and asks for a reply
        reader.conn.send_status(commit1.end_lsn, commit1.end_lsn, reply=True)
        answer = reader.read_keepalive(timeout=10)
        assert answer.wal_end >= commit3.end_lsn
        confirmed = wait_until(
            lambda: (
                db.scalar(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                    (reader.slot,),
                )
                == f"{commit1.end_lsn >> 32:X}/{commit1.end_lsn & 0xFFFFFFFF:X}"
            ),
            timeout=10,
            message="confirmed_flush_lsn to move to the confirmed LSN",
        )
        assert confirmed

    # the same bytes, decoded without the Relation first, are an error, not a guess
    with pytest.raises(DecodeError) as err:
        Decoder().decode(got[3].payload)
    assert err.value.kind == "INSERT" and err.value.offset == 1
    assert f"relation {t_oid}" in str(err.value)


def test_binary_origin_and_truncate(db: TestDb) -> None:
    conn = db.connect()
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
    conn.execute("CREATE TABLE a (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY)")
    conn.execute("CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a)")
    conn.execute("CREATE TABLE c (id serial PRIMARY KEY)")
    conn.execute("CREATE PUBLICATION pub FOR ALL TABLES")
    oids = {name: oid(conn, name) for name in "tabc"}
    conn.execute("INSERT INTO a DEFAULT VALUES")
    conn.execute("INSERT INTO b VALUES (1, 1)")

    with SlotReader(db.dsn, "pub", proto_version=1, options={"binary": "'true'"}) as reader:
        reader.start()
        conn.execute("SELECT pg_replication_origin_create('upstream')")
        conn.execute("SELECT pg_replication_origin_session_setup('upstream')")
        with conn.transaction():
            xid = int(scalar(conn, "SELECT pg_current_xact_id()::text"))
            conn.execute("SELECT pg_replication_origin_xact_setup('1/ABCDEF0', '2024-01-02 03:04:05+00')")
            conn.execute("INSERT INTO t VALUES (1, 'replayed')")
        conn.execute("SELECT pg_replication_origin_session_reset()")
        conn.execute("TRUNCATE a, c RESTART IDENTITY CASCADE")  # cascades to b
        conn.execute("TRUNCATE c RESTART IDENTITY")
        conn.execute("TRUNCATE a CASCADE")
        conn.execute("TRUNCATE t")
        got = reader.read_transactions(5)

    ends = [i for i, c in enumerate(got) if isinstance(c.message, Commit)]
    replayed = got[: ends[0] + 1]
    assert kinds(replayed) == ["Begin", "Origin", "Relation", "Insert", "Commit"]
    begin, _ = assert_transaction(replayed, xid)
    # an origin's commit time and LSN are the ones given to pg_replication_origin_xact_setup
    assert begin.commit_ts == 757_479_845_000_000  # 2024-01-02 03:04:05 UTC, since 2000-01-01
    assert replayed[1].message == Origin(0x1_0ABC_DEF0, "upstream")
    rel_t = one(replayed, Relation)
    assert one(replayed, Insert).new == [Binary(b"\x00\x00\x00\x01"), Binary(b"replayed")]

    truncates = only(got, Truncate)
    assert [(m.options, sorted(r.relation_id for r in m.relations)) for m in truncates] == [
        (TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY, sorted([oids["a"], oids["b"], oids["c"]])),
        (TRUNCATE_RESTART_IDENTITY, [oids["c"]]),
        (TRUNCATE_CASCADE, sorted([oids["a"], oids["b"]])),
        (0, [oids["t"]]),
    ]
    assert truncates[0].cascade and truncates[0].restart_identity
    assert not truncates[1].cascade and truncates[1].restart_identity
    assert truncates[2].cascade and not truncates[2].restart_identity
    assert truncates[3].relations == [rel_t]
    assert all(m.xid is None for m in truncates)
    # the listed tables come first, in the order given
    assert [r.name for r in truncates[0].relations][:2] == ["a", "c"]


def _wait_for_stream(reader: SlotReader) -> list[Captured]:
    """Read until the walsender has streamed at least one block (Stream Start .. Stop)."""
    return reader.read_until(lambda got: any(isinstance(c.message, StreamStop) for c in got))


def _assert_stream_blocks(captured: list[Captured], xid: int, first: bool) -> None:
    """Stream blocks alternate Start/Stop, all for ``xid``; only the first is marked so."""
    starts = only(captured, StreamStart)
    assert starts and all(s.xid == xid for s in starts)
    assert [s.first_segment for s in starts] == [first] + [False] * (len(starts) - 1)
    depth = 0
    for c in captured:
        if isinstance(c.message, StreamStart):
            depth += 1
        elif isinstance(c.message, StreamStop):
            depth -= 1
        elif isinstance(c.message, (Insert, Relation)):
            assert depth == 1, "change outside a stream block"
        assert depth in (0, 1)


def _stream_main_and_savepoint(
    conn: psycopg.Connection[Any], reader: SlotReader
) -> tuple[int, list[Captured]]:
    """Begin a large transaction (3000 rows, then 3000 more in SAVEPOINT s) and read until the
    savepoint's rows were streamed; returns its xid and what was read. The transaction stays open."""
    conn.execute("BEGIN")
    xid = int(scalar(conn, "SELECT pg_current_xact_id()::text"))
    conn.execute("INSERT INTO t SELECT i, 'main ' || i FROM generate_series(1, 3000) i")
    conn.execute("SAVEPOINT s")
    conn.execute("INSERT INTO t SELECT i, 'sub ' || i FROM generate_series(3001, 6000) i")
    streamed = reader.read_until(
        lambda got: (
            any(note(c.message).startswith(b"sub") for c in got) and isinstance(got[-1].message, StreamStop)
        )
    )
    return xid, streamed


def test_streaming_protocol_2(db: TestDb) -> None:
    conn = db.connect()
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
    conn.execute("CREATE PUBLICATION pub FOR TABLE t")
    rel_id = oid(conn, "t")
    options = {"streaming": "'on'"}
    with SlotReader(db.dsn, "pub", proto_version=2, options=options, conn_options=SMALL_WORK_MEM) as reader:
        reader.start()
        # a large transaction with a subtransaction that is rolled back after it was streamed
        xid, streamed = _stream_main_and_savepoint(conn, reader)
        conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.execute("INSERT INTO t SELECT i, 'after ' || i FROM generate_series(6001, 7000) i")
        conn.execute("COMMIT")
        committed = streamed + reader.read_through(StreamCommit)

        _assert_stream_blocks(committed, xid, first=True)
        relation = only(committed, Relation)[0]
        assert relation.relation_id == rel_id and relation.xid is not None
        inserts = only(committed, Insert)
        # inside a stream, a change carries the xid of the (sub)transaction that made it
        xids = {p: {i.xid for i in inserts if note(i).startswith(p)} for p in (b"main", b"sub", b"after")}
        assert xids[b"main"] == {xid}
        (sub_xid,) = xids[b"sub"]
        (after_xid,) = xids[b"after"]
        assert sub_xid is not None and sub_xid != xid and after_xid not in (xid, sub_xid)
        assert sum(1 for i in inserts if note(i).startswith(b"main")) == 3000
        assert sum(1 for i in inserts if note(i).startswith(b"after")) == 1000
        assert all(i.relation is relation or i.relation.relation_id == rel_id for i in inserts)

        abort = one(committed, StreamAbort)
        assert abort == StreamAbort(xid, sub_xid, None, None)  # no abort LSN before protocol 4
        commit = one(committed, StreamCommit)
        assert commit.xid == xid and commit.flags == 0
        assert commit.end_lsn > commit.commit_lsn
        assert committed[-1].message is commit
        assert committed[-1].frame.wal_start == commit.end_lsn
        assert_recent(commit.commit_ts)
        commit_lsn = parse_lsn(db.scalar("SELECT pg_current_wal_insert_lsn()::text"))
        assert commit.end_lsn <= commit_lsn

        # a large top-level transaction rolled back after streaming: its abort names itself twice
        conn.execute("BEGIN")
        xid2 = int(scalar(conn, "SELECT pg_current_xact_id()::text"))
        conn.execute("INSERT INTO t SELECT i, 'doomed ' || i FROM generate_series(10001, 13000) i")
        streamed = _wait_for_stream(reader)
        conn.execute("ROLLBACK")
        aborted = streamed + reader.read_transactions(1)
        _assert_stream_blocks(aborted, xid2, first=True)
        assert aborted[-1].message == StreamAbort(xid2, xid2, None, None)
        assert not reader.decoder.in_stream


def test_two_phase_protocol_3(db: TestDb) -> None:
    if db.major < 15:
        pytest.skip("two_phase in START_REPLICATION needs PostgreSQL 15+")
    conn = db.connect()
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
    conn.execute("CREATE PUBLICATION pub FOR TABLE t")
    options = {"two_phase": "'true'", "streaming": "'on'"}
    with SlotReader(db.dsn, "pub", proto_version=3, options=options, conn_options=SMALL_WORK_MEM) as reader:
        reader.start()  # decoding is two-phase from the start position on
        prepared: dict[str, int] = {}
        for gid in ("g-commit", "g-rollback"):
            conn.execute("BEGIN")
            prepared[gid] = int(scalar(conn, "SELECT pg_current_xact_id()::text"))
            conn.execute("INSERT INTO t VALUES (%s, %s)", (len(prepared), gid))
            conn.execute(f"PREPARE TRANSACTION '{gid}'")
        conn.execute("COMMIT PREPARED 'g-commit'")
        conn.execute("ROLLBACK PREPARED 'g-rollback'")
        got = reader.read_transactions(4)
        assert kinds_once(got) == [
            "BeginPrepare", "Relation", "Insert", "Prepare",
            "BeginPrepare", "Insert", "Prepare",
            "CommitPrepared", "RollbackPrepared",
        ]  # fmt: skip
        begins, prepares = only(got, BeginPrepare), only(got, Prepare)
        for gid, begin, prepare in zip(prepared, begins, prepares, strict=True):
            assert begin.gid == prepare.gid == gid
            assert begin.xid == prepare.xid == prepared[gid]
            assert begin.prepare_lsn == prepare.prepare_lsn
            assert begin.end_lsn == prepare.end_lsn > prepare.prepare_lsn
            assert begin.prepare_ts == prepare.prepare_ts
            assert prepare.flags == 0
            assert_recent(prepare.prepare_ts)
            assert frame_of(got, prepare).frame.wal_start == prepare.end_lsn
        inserts = only(got, Insert)
        assert [i.new for i in inserts] == [[b"1", b"g-commit"], [b"2", b"g-rollback"]]
        committed = one(got, CommitPrepared)
        assert committed.gid == "g-commit" and committed.xid == prepared["g-commit"]
        assert committed.flags == 0 and committed.end_lsn > committed.commit_lsn >= prepares[0].end_lsn
        assert_recent(committed.commit_ts)
        rolled_back = one(got, RollbackPrepared)
        assert rolled_back.gid == "g-rollback" and rolled_back.xid == prepared["g-rollback"]
        assert rolled_back.flags == 0
        assert rolled_back.prepare_end_lsn == prepares[1].end_lsn
        assert rolled_back.prepare_ts == prepares[1].prepare_ts
        assert rolled_back.rollback_end_lsn > rolled_back.prepare_end_lsn
        assert rolled_back.rollback_ts >= rolled_back.prepare_ts

        # a large prepared transaction is streamed, then prepared with Stream Prepare
        conn.execute("BEGIN")
        big_xid = int(scalar(conn, "SELECT pg_current_xact_id()::text"))
        conn.execute("INSERT INTO t SELECT i, 'big ' || i FROM generate_series(100, 3000) i")
        streamed = _wait_for_stream(reader)
        conn.execute("PREPARE TRANSACTION 'g-big'")
        streamed += reader.read_transactions(1)
        _assert_stream_blocks(streamed, big_xid, first=True)
        stream_prepare = streamed[-1].message
        assert isinstance(stream_prepare, StreamPrepare)
        assert (stream_prepare.flags, stream_prepare.xid, stream_prepare.gid) == (0, big_xid, "g-big")
        assert stream_prepare.end_lsn > stream_prepare.prepare_lsn
        assert_recent(stream_prepare.prepare_ts)
        assert len(only(streamed, Insert)) == 2901
        conn.execute("COMMIT PREPARED 'g-big'")
        final = reader.read_transactions(1)
        assert kinds(final) == ["CommitPrepared"]
        big_commit = final[0].message
        assert isinstance(big_commit, CommitPrepared)
        # other WAL (a running-xacts record of the background writer) may come between PREPARE
        # and COMMIT PREPARED
        assert final[0].frame.wal_start > big_commit.commit_lsn >= stream_prepare.end_lsn
        assert big_commit == CommitPrepared(
            0, big_commit.commit_lsn, final[0].frame.wal_start, big_commit.commit_ts, big_xid, "g-big"
        )
        assert_recent(big_commit.commit_ts)


def test_parallel_streaming_abort_protocol_4(db: TestDb) -> None:
    if db.major < 16:
        pytest.skip("streaming = parallel (and protocol 4) needs PostgreSQL 16+")
    conn = db.connect()
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
    conn.execute("CREATE PUBLICATION pub FOR TABLE t")
    options = {"streaming": "'parallel'"}
    with SlotReader(db.dsn, "pub", proto_version=4, options=options, conn_options=SMALL_WORK_MEM) as reader:
        reader.start()
        xid, streamed = _stream_main_and_savepoint(conn, reader)
        before_abort = parse_lsn(db.scalar("SELECT pg_current_wal_insert_lsn()::text"))
        conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.execute("ROLLBACK")
        after_abort = parse_lsn(db.scalar("SELECT pg_current_wal_insert_lsn()::text"))
        got = streamed + reader.read_transactions(2)
        assert len(only(got, StreamAbort)) == 2, kinds(got)
        _assert_stream_blocks(got, xid, first=True)
        sub_xid = next(i.xid for i in only(got, Insert) if note(i).startswith(b"sub"))
        aborts = only(got, StreamAbort)
        assert [(a.xid, a.subxid) for a in aborts] == [(xid, sub_xid), (xid, xid)]
        for abort in aborts:
            # protocol 4 with parallel streaming adds the abort record's LSN and time
            assert abort.abort_lsn is not None and abort.abort_ts is not None
            assert before_abort <= abort.abort_lsn <= after_abort
            assert_recent(abort.abort_ts)
            assert frame_of(got, abort).frame.wal_start == abort.abort_lsn
        assert (aborts[0].abort_lsn or 0) < (aborts[1].abort_lsn or 0)
