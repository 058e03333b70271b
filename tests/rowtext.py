"""Rows as the server's text output, for the tests of the encoders that read it (COPY lines in
`test_snapshot`, pgoutput's TupleData in `test_avro`)."""

from __future__ import annotations

from datetime import datetime

from hypothesis import strategies as st

#: (name, type OID, typmod): bigint, text, numeric(12,2), timestamptz, boolean, integer
COLUMNS = [
    ("id", 20, -1),
    ("note", 25, -1),
    ("amount", 1700, ((12 << 16) | 2) + 4),
    ("at", 1184, -1),
    ("active", 16, -1),
    ("qty", 23, -1),
]

_CHARS = st.characters(min_codepoint=1, max_codepoint=0x2FFF)  # no NUL, no surrogate
_TEXT = st.text(_CHARS, max_size=12)
#: the text of a row of `COLUMNS` as the server prints it (None: NULL), odd values included
ROW_TEXT = st.tuples(
    st.integers(-(2**63), 2**63 - 1).map(lambda n: str(n).encode()),
    st.one_of(st.none(), _TEXT.map(str.encode)),
    st.one_of(
        st.none(),
        st.integers(-(10**12) + 1, 10**12 - 1).map(
            lambda n: b"%s%d.%02d" % (b"-" * (n < 0), abs(n) // 100, abs(n) % 100)
        ),
        st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"0.00", b"-0.01", b"12.5", b"1e3", b"-.50"]),
    ),
    st.one_of(
        st.none(),
        st.datetimes(datetime(1000, 1, 1)).map(lambda t: t.strftime("%Y-%m-%d %H:%M:%S.%f+00").encode()),
        st.sampled_from([b"infinity", b"-infinity", b"2026-12-04 13:38:00+05:30"]),
    ),
    st.one_of(st.none(), st.sampled_from([b"t", b"f"])),
    st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1).map(lambda n: str(n).encode())),
)
