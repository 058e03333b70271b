"""cdc.pgoutput without a server: LSNs, frames, the status update, decoder state and errors.

Messages here are built by hand from the manual's field lists; the golden
tests check the same decoder against bytes real walsenders sent.
"""

from __future__ import annotations

import struct

import pytest

from cdc.errors import DecodeError
from cdc.lsn import PG_EPOCH_US, format_lsn, parse_lsn
from cdc.pgoutput import (
    UNCHANGED,
    Begin,
    Column,
    Decoder,
    Insert,
    Keepalive,
    Relation,
    StreamAbort,
    StreamStart,
    XLogData,
    decode_copy_data,
    encode_standby_status,
)


def test_lsn_text() -> None:
    assert parse_lsn("16/B374D848") == 0x16_B374D848
    assert parse_lsn(" 0/0 ") == 0
    assert format_lsn(0x16_B374D848) == "16/B374D848"
    assert format_lsn(parse_lsn("FFFFFFFF/FFFFFFFF")) == "FFFFFFFF/FFFFFFFF"
    assert format_lsn(1) == "0/1"
    for bad in ("", "0/", "/0", "1", "0x1/0", "-1/0", "+1/0", "1_0/0", "123456789/0", "0/0/0", "g/0"):
        with pytest.raises(ValueError, match="not an LSN"):
            parse_lsn(bad)


def test_copy_data_frames_and_status_update() -> None:
    frame = b"w" + struct.pack(">QQq", 10, 20, 30) + b"B..."
    assert decode_copy_data(frame) == XLogData(10, 20, 30, b"B...")
    assert decode_copy_data(memoryview(b"k" + struct.pack(">Qq", 5, 6) + b"\x01")) == Keepalive(5, 6, True)
    for bad, kind in (
        (b"", "CopyData"),
        (b"w" + b"\x00" * 23, "XLogData"),
        (b"k" + b"\x00" * 16, "Keepalive"),
    ):
        with pytest.raises(DecodeError) as err:
            decode_copy_data(bad)
        assert err.value.kind == kind
    with pytest.raises(DecodeError, match="reply-requested flag 2"):
        decode_copy_data(b"k" + b"\x00" * 16 + b"\x02")
    with pytest.raises(DecodeError, match="unknown CopyData frame type 0x78"):
        decode_copy_data(b"x")
    status = encode_standby_status(1, 2, 3, 4, reply_requested=True)
    assert status == b"r" + struct.pack(">QQQq", 1, 2, 3, 4) + b"\x01"
    assert encode_standby_status(1, 2, 3, 4)[-1] == 0
    assert PG_EPOCH_US == 946_684_800_000_000


def test_xlogdata_on_the_stream_path() -> None:
    """`Decoder.decode_xlogdata` (the per-row path) gives the positions and the message, and a frame
    shorter than its header is a DecodeError, not a struct.error."""
    decoder = Decoder()
    frame = b"w" + struct.pack(">QQq", 10, 20, 30) + _relation()
    wal_start, wal_end, message = decoder.decode_xlogdata(frame)
    assert (wal_start, wal_end) == (10, 20)
    assert isinstance(message, Relation) and message.name == "t"
    for short in (b"w", b"w" + b"\x00" * 16, b"w" + b"\x00" * 23):
        with pytest.raises(DecodeError, match="header alone is 25") as err:
            decoder.decode_xlogdata(short)
        assert err.value.kind == "XLogData"
    with pytest.raises(DecodeError, match="empty message"):
        decoder.decode_xlogdata(b"w" + b"\x00" * 24)


def _relation(relation_id: int = 16384, xid: bytes = b"") -> bytes:
    columns = b"\x01id\x00" + struct.pack(">Ii", 23, -1) + b"\x00note\x00" + struct.pack(">Ii", 25, -1)
    return b"R" + xid + struct.pack(">I", relation_id) + b"public\x00t\x00d" + struct.pack(">h", 2) + columns


def _insert(values: bytes, ncols: int = 2, xid: bytes = b"") -> bytes:
    return b"I" + xid + struct.pack(">I", 16384) + b"N" + struct.pack(">h", ncols) + values


def test_decoder_tuples_and_relation_cache() -> None:
    decoder = Decoder()
    relation = decoder.decode(_relation())
    assert relation == Relation(
        16384, "public", "t", ord("d"), [Column(1, "id", 23, -1), Column(0, "note", 25, -1)]
    )
    text = b"t" + struct.pack(">i", 1) + b"7"
    insert = decoder.decode(_insert(text + b"u"))
    assert isinstance(relation, Relation)
    assert insert == Insert(relation, [b"7", UNCHANGED], None)
    assert decoder.decode(_insert(b"nn")) == Insert(relation, [None, None], None)
    with pytest.raises(DecodeError) as err:
        decoder.decode(_insert(text, ncols=1))
    assert (err.value.kind, err.value.offset) == ("INSERT", 6)
    assert "tuple of 1 columns, the relation has 2" in str(err.value)
    with pytest.raises(
        DecodeError, match=r"unknown column kind 0x78 in column 1 \(INSERT message, byte 14\)"
    ):
        decoder.decode(_insert(text + b"x"))
    with pytest.raises(DecodeError, match="column 0 length 9 beyond the message"):
        decoder.decode(_insert(b"t" + struct.pack(">i", 9) + b"7n"))
    with pytest.raises(DecodeError, match="1 unexpected trailing bytes"):
        decoder.decode(_insert(b"nn!"))
    with pytest.raises(DecodeError, match="change for relation 16385 before its Relation message"):
        decoder.decode(b"D" + struct.pack(">I", 16385) + b"K" + struct.pack(">h", 0))


def test_decoder_stream_state() -> None:
    decoder = Decoder()
    assert decoder.decode(b"S" + struct.pack(">I", 700) + b"\x01") == StreamStart(700, True)
    assert decoder.in_stream
    # inside a block, Relation and changes carry an xid
    relation = decoder.decode(_relation(xid=struct.pack(">I", 701)))
    assert isinstance(relation, Relation) and relation.xid == 701
    insert = decoder.decode(_insert(b"nn", xid=struct.pack(">I", 701)))
    assert isinstance(insert, Insert) and insert.xid == 701
    for message in (
        b"S" + struct.pack(">I", 700) + b"\x00",
        b"B" + struct.pack(">QqI", 1, 2, 3),
        b"A" + struct.pack(">II", 700, 700),
    ):
        with pytest.raises(DecodeError, match="inside"):
            decoder.decode(message)
    decoder.decode(b"E")
    assert not decoder.in_stream
    with pytest.raises(DecodeError, match="Stream Stop without a Stream Start"):
        decoder.decode(b"E")
    assert decoder.decode(b"A" + struct.pack(">II", 700, 701)) == StreamAbort(700, 701)
    assert decoder.decode(b"A" + struct.pack(">IIQq", 700, 700, 99, 98)) == StreamAbort(700, 700, 99, 98)
    with pytest.raises(DecodeError, match=r"length 13, expected 25 \(STREAM_ABORT message, byte 13\)"):
        decoder.decode(b"A" + struct.pack(">III", 700, 700, 1))
    assert decoder.decode(b"B" + struct.pack(">QqI", 1, 2, 3)) == Begin(1, 2, 3)


def test_malformed_messages_name_kind_and_offset() -> None:
    decoder = Decoder()
    cases = [
        (b"", "pgoutput", 0, "empty message"),
        (b"Z", "pgoutput", 0, "unknown message type 0x5a"),
        (b"B\x00", "BEGIN", 2, "length 2, expected 21"),
        (b"O" + struct.pack(">Q", 1) + b"name", "ORIGIN", 9, "unterminated string"),
        (
            b"M\x01" + struct.pack(">Q", 1) + b"p\x00" + struct.pack(">i", 5) + b"abc",
            "MESSAGE",
            12,
            "content length 5",
        ),
        (b"T" + struct.pack(">i", 1) + b"\x00", "TRUNCATE", 1, "relation count 1"),
        (
            b"R" + struct.pack(">I", 1) + b"s\x00t\x00z" + struct.pack(">h", 0),
            "RELATION",
            9,
            "unknown replica identity",
        ),
        (b"Y" + struct.pack(">I", 1) + b"s\x00\xff\x00", "TYPE", 9, "malformed message"),
        (b"b" + struct.pack(">QQq", 1, 2, 3), "BEGIN_PREPARE", 25, "malformed message"),
    ]
    for payload, kind, offset, text in cases:
        with pytest.raises(DecodeError) as err:
            decoder.decode(payload)
        assert (err.value.kind, err.value.offset) == (kind, offset), payload
        assert text in str(err.value)
