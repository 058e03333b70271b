"""The per-row Avro encoders, generated once per table version."""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Final, TypeVar

from fastavro import schemaless_writer

from cdc.avro.schemas import _MEANINGFUL_LOGICAL, kind_of, logical_type, parse
from cdc.pgtypes.columns import DECIMAL_FORM, TEXT_FORM

# -- encoding ---------------------------------------------------------------------------------
#
# The per-row path. Avro binary has no framing: a record is its fields'
# encodings one after the other, a union is the branch index then the value.
# So the envelope is assembled from parts built once per table version (the
# record header, the constant head of the source block), once per transaction
# and per event, and each column has an encoder chosen once from its Avro
# type: plain Python for the primitive and logical types of cdc.pgtypes (about
# 2x faster than fastavro's generic writer, which validates each union
# branch), fastavro's schemaless writer for everything else. The tests check
# the result byte for byte against fastavro writing the whole envelope.

Encoder = Callable[[Any], bytes]
_T = TypeVar("_T")
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_INT64_MIN, _INT64_END = -(1 << 63), 1 << 63


def _varint_slow(z: int) -> bytes:
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


# A varint is 7-bit groups, low first, with the high bit set on all but the last
# byte. Tables of 14-bit groups turn the per-byte loop into at most five lookups
# and concatenations: about twice as fast for the 4-8 byte LSNs and timestamps.
_FINAL: Final = tuple(_varint_slow(z) for z in range(1 << 14))
_MIDDLE: Final = tuple(bytes(((g & 0x7F) | 0x80, ((g >> 7) & 0x7F) | 0x80)) for g in range(1 << 14))


def _varint(n: int) -> bytes:
    """An Avro int/long: zig-zag, then base-128 varint."""
    z = (n << 1) ^ (n >> 63)
    if z < 0x4000:
        if z < 0:
            raise OverflowError(f"{n} does not fit an Avro long")
        return _FINAL[z]
    if z < 0x10000000:
        return _MIDDLE[z & 0x3FFF] + _FINAL[z >> 14]
    if z < 0x40000000000:
        return _MIDDLE[z & 0x3FFF] + _MIDDLE[(z >> 14) & 0x3FFF] + _FINAL[z >> 28]
    if z < 0x100000000000000:
        return (
            _MIDDLE[z & 0x3FFF] + _MIDDLE[(z >> 14) & 0x3FFF] + _MIDDLE[(z >> 28) & 0x3FFF] + _FINAL[z >> 42]
        )
    if not _INT64_MIN <= n < _INT64_END:
        raise OverflowError(f"{n} does not fit an Avro long")
    return (
        _MIDDLE[z & 0x3FFF]
        + _MIDDLE[(z >> 14) & 0x3FFF]
        + _MIDDLE[(z >> 28) & 0x3FFF]
        + _MIDDLE[(z >> 42) & 0x3FFF]
        + _FINAL[z >> 56]
    )


_long = _varint


class Clock:
    """A processing time as the envelope's ``ts_ms`` (long), ``ts_us`` and ``ts_ns`` (``["null",
    "long"]``), encoded for every event at little cost: the high 7-bit groups of the varints change
    slowly (every 8 ms for microseconds, 134 ms for nanoseconds), so they are kept between calls."""

    __slots__ = ("_ms", "_ms_bytes", "_ns_high", "_ns_high_bytes", "_us_high", "_us_high_bytes")

    def __init__(self) -> None:
        self._ms = self._us_high = self._ns_high = -1
        self._ms_bytes = self._us_high_bytes = self._ns_high_bytes = b""

    def encode(self, ns: int) -> bytes:
        """ts_ms, ts_us, ts_ns of ``ns`` nanoseconds since 1970 (not before it)."""
        ms = ns // 1_000_000
        if ms != self._ms:
            self._ms, self._ms_bytes = ms, _long(ms)
        zu, zn = (ns // 1000) << 1, ns << 1  # zig-zag of non-negative numbers
        if zu < 0x4000 or zn < 0x10000000 or ns >= _INT64_END:
            return self._ms_bytes + b"\x02" + _long(ns // 1000) + b"\x02" + _long(ns)
        high = zu >> 14
        if high != self._us_high:
            self._us_high, self._us_high_bytes = high, _varint_slow(high)
        high = zn >> 28
        if high != self._ns_high:
            self._ns_high, self._ns_high_bytes = high, _varint_slow(high)
        return b"".join(
            (
                self._ms_bytes,
                b"\x02",
                _MIDDLE[zu & 0x3FFF],
                self._us_high_bytes,
                b"\x02",
                _MIDDLE[zn & 0x3FFF],
                _MIDDLE[(zn >> 14) & 0x3FFF],
                self._ns_high_bytes,
            )
        )


def _int(n: int) -> bytes:
    if not -(1 << 31) <= n < 1 << 31:
        raise OverflowError(f"{n} does not fit an Avro int")
    return _long(n)


def _string(text: str) -> bytes:
    data = text.encode()
    return _long(len(data)) + data


def _bytes(data: bytes) -> bytes:
    return _long(len(data)) + data


def _boolean(value: bool) -> bytes:
    if value.__class__ is not bool:
        raise TypeError(f"{value!r} is not a bool")
    return b"\x01" if value else b"\x00"


def _nullable_string(text: str | None) -> bytes:
    return b"\x00" if text is None else b"\x02" + _string(text)


def _decimal_encoder(precision: int, scale: int) -> Encoder:
    """Decimal -> two's-complement big-endian unscaled integer, as the decimal logical type says."""
    limit: int = 10**precision
    factor: int = 10**scale

    def encode(value: Decimal) -> bytes:
        numerator, denominator = value.as_integer_ratio()
        unscaled, remainder = divmod(numerator * factor, denominator)
        if remainder:
            raise ValueError(f"{value} has more than {scale} decimal places")
        if not -limit < unscaled < limit:
            raise ValueError(f"{value} has more than {precision} digits")
        data = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
        return _long(len(data)) + data

    return encode


def _fastavro_encoder(schema: Any) -> Encoder:
    parsed = parse(schema)

    def encode(value: Any) -> bytes:
        buf = io.BytesIO()
        schemaless_writer(buf, parsed, value)
        return buf.getvalue()

    return encode


_PRIMITIVE_ENCODERS: Final[dict[str, Encoder]] = {
    "int": _int,
    "long": _long,
    "string": _string,
    "bytes": _bytes,
    "boolean": _boolean,
    "double": _DOUBLE.pack,
    "float": _FLOAT.pack,
}


def _array_encoder(items: Any) -> Encoder:
    """An array as one block (count, items, 0), as fastavro writes it; items by `column_encoder`.

    fastavro's own writer cannot take the TOAST placeholder (a str) among the items of a date
    array: its union resolution hands the str to the date writer, which fails on it.
    """
    item = column_encoder(items)

    def encode(values: list[Any]) -> bytes:
        if not values:
            return b"\x00"
        return b"".join((_long(len(values)), *map(item, values), b"\x00"))

    return encode


def _branch_encoder(schema: Any) -> Encoder:
    """The encoder of a non-null value of one (non-union) Avro type."""
    kind, logical = kind_of(schema), logical_type(schema)
    if logical == "decimal" and kind == "bytes":
        return _decimal_encoder(int(schema["precision"]), int(schema.get("scale", 0)))
    if kind == "array" and logical is None and isinstance(schema, dict) and isinstance(schema["items"], list):
        return _array_encoder(schema["items"])
    if kind == "record" and isinstance(schema, dict) and _self_contained(schema):
        return _record_encoder(schema)
    if logical is None or logical in _MEANINGFUL_LOGICAL or logical == "uuid":
        # date, time and timestamps are ints in cdc.pgtypes, uuid a str: the underlying type's encoding
        primitive = _PRIMITIVE_ENCODERS.get(kind)
        if primitive is not None and (logical is None or kind in ("int", "long", "string")):
            return primitive
    return _fastavro_encoder(schema)


def _self_contained(schema: Any) -> bool:
    """No reference to a named type defined elsewhere (a record's own encoder can be made)."""
    if isinstance(schema, str):
        return schema in _PRIMITIVE_ENCODERS or schema == "null"
    if isinstance(schema, list):
        return all(_self_contained(b) for b in schema)
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record":
            return all(_self_contained(f["type"]) for f in schema["fields"])
        if kind == "array":
            return _self_contained(schema["items"])
        if kind == "map":
            return _self_contained(schema["values"])
        return isinstance(kind, str) and kind in _PRIMITIVE_ENCODERS
    return False


def _record_encoder(schema: dict[str, Any]) -> Encoder:
    """A record as its fields' encodings one after the other (Debezium's structs: Point, ...)."""
    fields = [(f["name"], column_encoder(f["type"])) for f in schema["fields"]]

    def encode(value: dict[str, Any]) -> bytes:
        return b"".join([encode_field(value[name]) for name, encode_field in fields])

    return encode


def _special_decimal(value: Any) -> str | None:
    """NaN and infinities of a numeric(p,s) column, which the decimal type cannot hold, as text."""
    if value.__class__ is Decimal and not value.is_finite():
        return "NaN" if value.is_nan() else ("-Infinity" if value.is_signed() else "Infinity")
    return None


def column_encoder(avro_type: Any) -> Encoder:
    """The encoder of a column value (None included when ``avro_type`` is a union with null)."""
    if not isinstance(avro_type, list):
        return _branch_encoder(avro_type)
    index = [_long(i) for i in range(len(avro_type))]
    null = next((index[i] for i, b in enumerate(avro_type) if b == "null"), None)
    others = [(i, b) for i, b in enumerate(avro_type) if b != "null"]
    if len(others) == 1:
        ((at, branch),) = others
        tag, encode = index[at], _branch_encoder(branch)

        def one(value: Any) -> bytes:
            if value is None and null is not None:
                return null
            return tag + encode(value)

        return one
    strings = [i for i, b in others if b == "string"]
    rest = [(i, b) for i, b in others if b != "string"]
    if len(others) == 2 and len(strings) == 1 and kind_of(rest[0][1]) != "string":
        # [X, "string"]: the string branch carries TOAST placeholders and NaN of numeric(p,s)
        string_tag, (at, branch) = index[strings[0]], rest[0]
        tag, encode = index[at], _branch_encoder(branch)
        is_decimal = logical_type(branch) == "decimal"

        def with_string(value: Any) -> bytes:
            if value is None and null is not None:
                return null
            if value.__class__ is str:
                return string_tag + _string(value)
            if is_decimal and (text := _special_decimal(value)) is not None:
                return string_tag + _string(text)
            return tag + encode(value)

        return with_string
    return _fastavro_encoder(avro_type)


def _column_expression(index: int, avro_type: Any, env: dict[str, Any], tag: str = "") -> str:
    """A Python expression encoding ``v<index>`` as ``avro_type``: the common shapes written out,
    the rest a call of its `column_encoder` (same bytes either way; the tests compare with fastavro).
    Its constants go in ``env`` under names ending in ``<tag><index>``."""
    value = f"v{index}"
    slot = f"{tag}{index}"
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    null = branches.index("null") if "null" in branches else None
    others = [(i, b) for i, b in enumerate(branches) if b != "null"]

    def plain(branch: Any) -> str | None:
        kind, logical = kind_of(branch), logical_type(branch)
        meaningful = logical is None or logical == "uuid" or logical in _MEANINGFUL_LOGICAL
        if not meaningful or logical == "decimal":  # (no *-unpacking here: mypyc cannot compile it)
            return None
        if kind == "long":
            return f"L({value})"
        if kind == "string" and (logical is None or logical == "uuid"):
            return f"S({value})"
        if kind == "boolean" and logical is None:
            return f"BOOL({value})"
        return None

    expr: str | None = None
    if len(others) == 1 and (inner := plain(others[0][1])) is not None:
        expr = inner if null is None else f"T{slot} + {inner}"
        env[f"T{slot}"] = _long(others[0][0])
    elif len(others) == 2 and others[1][1] == "string" and kind_of(others[0][1]) == "long":
        # [timestamp long, "string"]: instants beyond int64 microseconds travel as text
        long_expr = plain(others[0][1])
        if long_expr is not None:
            env[f"T{slot}"], env[f"U{slot}"] = _long(others[0][0]), _long(others[1][0])
            expr = f"(U{slot} + S({value}) if {value}.__class__ is str else T{slot} + {long_expr})"
    if expr is None:
        env[f"E{slot}"] = column_encoder(avro_type)
        return f"E{slot}({value})"
    if null is not None:
        env[f"N{slot}"] = _long(null)
        return f"(N{slot} if {value} is None else {expr})"
    return expr


#: generated row encoders by the repr of their column types: tables of the same shape (a database
#: of many similar tables, a table's versions) share one, compiled once
_ROW_ENCODERS: dict[str, Callable[[list[Any]], bytes]] = {}


def _generated(cache: dict[str, _T], key: str, make: Callable[[], _T]) -> _T:
    """The generated encoder ``cache`` holds under ``key``, made (and kept) the first time."""
    encode = cache.get(key)
    if encode is None:
        if len(cache) >= 4096:
            cache.clear()  # a bound, not a policy: thousands of shapes are rare
        encode = cache[key] = make()
    return encode


def _encoder_env() -> dict[str, Any]:
    """The names a generated encoder calls; `_column_expression` adds its constants."""
    return {"L": _long, "S": _string, "BOOL": _boolean, "join": b"".join}


def _compiled(source: str, env: dict[str, Any], what: str) -> Any:
    """The function ``encode`` that ``source`` defines, compiled with ``env`` as its globals."""
    exec(compile(source, f"<cdc.avro {what}>", "exec"), env)  # noqa: S102 - our own generated code
    return env["encode"]


def _row_encoder(types: list[Any]) -> Callable[[list[Any]], bytes]:
    """One function per column-type list encoding a row of wire values, generated from the types.

    Calling one small encoder per column costs a Python call each; a generated
    function with the common cases inlined costs one call per row.
    """
    return _generated(_ROW_ENCODERS, repr(types), lambda: _new_row_encoder(types))


def _new_row_encoder(types: list[Any]) -> Callable[[list[Any]], bytes]:
    if not types:
        return lambda row: b""
    env = _encoder_env()
    names = ", ".join(f"v{i}" for i in range(len(types)))
    parts = ", ".join(_column_expression(i, t, env) for i, t in enumerate(types))
    encode: Callable[[list[Any]], bytes] = _compiled(
        f"def encode(row):\n    {names}, = row\n    return join(({parts},))\n", env, "row encoder"
    )
    return encode


#: (rows, head, tail, key header, out): appends each row's (key, value) record to ``out``
ReadsEncoder = Callable[[Sequence[list[Any]], bytes, bytes, bytes, list[tuple[bytes | None, bytes]]], None]

#: generated reads encoders by the repr of their column types and key, as `_ROW_ENCODERS`
_READS_ENCODERS: dict[str, ReadsEncoder] = {}


def _reads_encoder(types: list[Any], key_types: list[Any] | None, key_indexes: Sequence[int]) -> ReadsEncoder:
    """A generated function encoding a batch of snapshot rows into records, as `_row_encoder` one row.

    ``head`` + row + ``tail`` is each value (an envelope the same for the batch), ``key header`` +
    the key columns each key (``key_types`` None: keyless, no key). One call per batch: the row's
    and the key's encoder calls and the key's list per row cost a fifth of its encoding.
    """
    cache_key = repr((types, key_types, list(key_indexes)))
    return _generated(_READS_ENCODERS, cache_key, lambda: _new_reads_encoder(types, key_types, key_indexes))


def _key_expression(key_types: list[Any] | None, key_indexes: Sequence[int], env: dict[str, Any]) -> str:
    """The key's bytes from the row's ``v<index>`` names: ``key_header`` and its columns; "None" keyless."""
    return _key_join(_key_columns(key_types, key_indexes, env))


def _key_columns(
    key_types: list[Any] | None, key_indexes: Sequence[int], env: dict[str, Any]
) -> list[str] | None:
    """The expressions of the key's columns (`_column_expression`); None for a table without a key."""
    if key_types is None:
        return None
    return [_column_expression(i, t, env, "k") for i, t in zip(key_indexes, key_types, strict=True)]


def _key_join(columns: list[str] | None) -> str:
    """``key_header`` and the key's column expressions: one column (nearly every key) without a
    join; "None" keyless."""
    if columns is None:
        return "None"
    if len(columns) == 1:
        return f"key_header + {columns[0]}"
    return f"key_header + join(({''.join(f'{c}, ' for c in columns)}))"


def _new_reads_encoder(
    types: list[Any], key_types: list[Any] | None, key_indexes: Sequence[int]
) -> ReadsEncoder:
    env = _encoder_env()
    names = "".join(f"v{i}, " for i in range(len(types)))
    parts = "".join(f"{_column_expression(i, t, env)}, " for i, t in enumerate(types))
    key = _key_expression(key_types, key_indexes, env)
    source = (
        "def encode(rows, head, tail, key_header, out):\n"
        "    append = out.append\n"
        f"    for ({names}) in rows:\n"
        f"        append(({key}, join((head, {parts}tail))))\n"
    )
    encode: ReadsEncoder = _compiled(source, env, "reads encoder")
    return encode


#: (lines, read, head, tail, key header, out): as `ReadsEncoder`, from rows still in COPY text lines
LinesEncoder = Callable[
    [Sequence[bytes], Callable[[bytes], list[Any]], bytes, bytes, bytes, list[tuple[bytes | None, bytes]]],
    None,
]

#: generated lines encoders by their reads encoder's key and their columns' parse functions
_LINES_ENCODERS: dict[str, LinesEncoder] = {}


def _lines_encoder(
    types: list[Any],
    key_types: list[Any] | None,
    key_indexes: Sequence[int],
    parsers: Sequence[Callable[[bytes], Any]],
    forms: Sequence[str | None],
) -> LinesEncoder:
    """`_reads_encoder` fed with COPY text lines: each column's ``parse`` is called in the
    same generated loop, with no row list and no call of a row parser between (0.6 us of a
    compiled snapshot worker's 5.2 a row; 1 us interpreted). A line without a backslash has no
    escape and no NULL: its values are what splitting it on tabs gives. Any other line goes
    through ``read``, the snapshot's own row reader. A column whose ``forms`` entry (its
    `cdc.pgtypes.text_form`) says how its text maps to its value, and not in the key, is encoded
    from its text directly (`_text_expression`). The key holds the parse functions by id: its
    entry keeps them (in its globals), so no id is reused while it exists."""
    cache_key = _text_key(types, key_types, key_indexes, parsers, forms)
    return _generated(
        _LINES_ENCODERS, cache_key, lambda: _new_lines_encoder(types, key_types, key_indexes, parsers, forms)
    )


def _text_key(
    types: list[Any],
    key_types: list[Any] | None,
    key_indexes: Sequence[int],
    parsers: Sequence[Callable[[bytes], Any]],
    forms: Sequence[str | None],
) -> str:
    """The cache key of an encoder that reads text (`_lines_encoder`, `_text_encoder`): its reads
    encoder's key, and its columns' parse functions by id (kept alive in the entry's globals)."""
    return repr((types, key_types, list(key_indexes), [id(p) for p in parsers], list(forms)))


def _new_lines_encoder(
    types: list[Any],
    key_types: list[Any] | None,
    key_indexes: Sequence[int],
    parsers: Sequence[Callable[[bytes], Any]],
    forms: Sequence[str | None],
) -> LinesEncoder:
    env = _encoder_env()
    names = "".join(f"v{i}, " for i in range(len(types)))
    expressions = [_column_expression(i, t, env) for i, t in enumerate(types)]
    parts = "".join(f"{e}, " for e in expressions)
    key = _key_expression(key_types, key_indexes, env)
    parse_plain, plain, _ = _from_text(types, key_indexes, parsers, forms, expressions, env, "P{i}(v{i})")
    plain_parts = "".join(f"{part}, " for part in plain)
    source = (
        "def encode(lines, read, head, tail, key_header, out):\n"
        "    append = out.append\n"
        "    for line in lines:\n"
        "        if b'\\\\' in line:\n"
        f"            {names}= read(line)\n"
        f"            append(({key}, join((head, {parts}tail))))\n"
        "        else:\n"
        f"            {names}= line.split(b'\\t')\n"
        f"{_indented(parse_plain, 12)}"
        f"            append(({key}, join((head, {plain_parts}tail))))\n"
    )
    encode: LinesEncoder = _compiled(source, env, "lines encoder")
    return encode


def _from_text(
    types: list[Any],
    key_indexes: Sequence[int],
    parsers: Sequence[Callable[[bytes], Any]],
    forms: Sequence[str | None],
    expressions: list[str],
    env: dict[str, Any],
    parse: str,
) -> tuple[list[str], list[str], list[int]]:
    """How a generated encoder gets a row's parts from the text ``v<i>``: the statements parsing
    the columns that need it (``parse``, a template of ``i``, then their ``expressions``), the
    parts, and the columns encoded straight from their text (`_text_expression`: those with a text
    form, outside the key). Each column's parse function is ``P<i>``."""
    statements: list[str] = []
    parts: list[str] = []
    from_text: list[int] = []
    for i, (avro_type, column_parse, form) in enumerate(zip(types, parsers, forms, strict=True)):
        env[f"P{i}"] = column_parse
        text = None if i in key_indexes else _text_expression(i, avro_type, form, env)
        if text is None:
            statements.append(f"v{i} = {parse.format(i=i)}")
            parts.append(expressions[i])
        else:
            parts.append(text)
            from_text.append(i)
    return statements, parts, from_text


def _indented(statements: list[str], indent: int) -> str:
    return "".join(f"{' ' * indent}{statement}\n" for statement in statements)


#: (the server's text of a row's columns, key header, the value's bytes before the row, the source
#: block's head and the parts after it) -> (key or None, the value): the whole record in one join
TextEncoder = Callable[[Sequence[Any], bytes, bytes, bytes, tuple[bytes, ...]], tuple[bytes | None, bytes]]

#: generated text encoders, keyed as `_LINES_ENCODERS`
_TEXT_ENCODERS: dict[str, TextEncoder] = {}


def _text_encoder(
    types: list[Any],
    key_types: list[Any] | None,
    key_indexes: Sequence[int],
    parsers: Sequence[Callable[[bytes], Any]],
    forms: Sequence[str | None],
) -> TextEncoder:
    """A generated function encoding a streamed row from its pgoutput text (a `TupleData`: bytes,
    or None for NULL) and its key, with no row of values between: `_lines_encoder`'s columns, one
    call per row. A value of any other kind (an unchanged TOAST value, a binary one) or text that
    does not encode raises: the caller goes the general way then (parse, then `encode`), which gives
    the same bytes or raises the error naming the column. Keyed and kept as `_lines_encoder`."""
    cache_key = _text_key(types, key_types, key_indexes, parsers, forms)
    return _generated(
        _TEXT_ENCODERS, cache_key, lambda: _new_text_encoder(types, key_types, key_indexes, parsers, forms)
    )


def _null_only(value: Any) -> None:
    """A column value of a `TupleData` that is not text: None (NULL) stays; anything else (an
    unchanged TOAST value, a binary one) is for the general path."""
    if value is not None:
        raise TypeError(f"a {type(value).__name__}, not text")


def _new_text_encoder(
    types: list[Any],
    key_types: list[Any] | None,
    key_indexes: Sequence[int],
    parsers: Sequence[Callable[[bytes], Any]],
    forms: Sequence[str | None],
) -> TextEncoder:
    env = _encoder_env()
    env["C"] = _null_only
    names = "".join(f"v{i}, " for i in range(len(types)))
    expressions = [_column_expression(i, t, env) for i, t in enumerate(types)]
    text_or_null = "P{i}(v{i}) if v{i}.__class__ is bytes else C(v{i})"
    parse, parts, from_text = _from_text(types, key_indexes, parsers, forms, expressions, env, text_or_null)
    for i in from_text:  # NULL is None here (a COPY line with one goes to the row reader)
        branches = types[i] if isinstance(types[i], list) else [types[i]]
        if "null" in branches:
            env[f"NX{i}"] = _long(branches.index("null"))
            parts[i] = f"(NX{i} if v{i} is None else {parts[i]})"
    columns = _key_columns(key_types, key_indexes, env)
    if columns is not None:
        for i, column in zip(key_indexes, list(columns), strict=True):
            if column == f"L(v{i})":  # a long key column: its varint once, for the key and the value
                parse.append(f"k{i} = L(v{i})")
                mine = re.compile(rf"\bL\(v{i}\)")
                parts = [mine.sub(f"k{i}", part) for part in parts]
                columns = [mine.sub(f"k{i}", c) for c in columns]
    key = _key_join(columns)
    source = (
        "def encode(values, key_header, head, source_head, tail):\n"
        f"    {names}= values\n"
        f"{_indented(parse, 4)}"
        f"    return {key}, join((head, {''.join(f'{part}, ' for part in parts)}source_head, *tail))\n"
    )
    encode: TextEncoder = _compiled(source, env, "text encoder")
    return encode


def _text_expression(index: int, avro_type: Any, form: str | None, env: dict[str, Any]) -> str | None:
    """An expression encoding the text output ``v<index>`` (bytes, never NULL) as the wire value
    its column's parse would give encoded as ``avro_type``, or None: ASCII text as its own bytes
    (no decode, no encode); a numeric(p,s) as its unscaled digits (no Decimal). Anything else
    goes through parse and the column's encoder (`_text_decimal`)."""
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    others = [(i, b) for i, b in enumerate(branches) if b != "null"]
    value, slot = f"v{index}", f"X{index}"
    if form == TEXT_FORM and len(others) == 1 and others[0][1] == "string":
        env[f"R{slot}"] = _long(others[0][0]) if isinstance(avro_type, list) else b""
        env[f"G{slot}"] = column_encoder(avro_type)
        return f"(R{slot} + L(len({value})) + {value} if {value}.isascii() else G{slot}(P{index}({value})))"
    decimal = [b for _, b in others if logical_type(b) == "decimal" and kind_of(b) == "bytes"]
    if form == DECIMAL_FORM and len(others) == 2 and decimal and others[1][1] == "string":
        tag = _long(next(i for i, b in others if b is decimal[0]))
        parse_it, encoder = env[f"P{index}"], column_encoder(avro_type)
        env[slot] = _text_decimal(
            int(decimal[0]["precision"]), int(decimal[0].get("scale", 0)), tag, lambda t: encoder(parse_it(t))
        )
        return f"{slot}({value})"
    return None


def _text_decimal(precision: int, scale: int, tag: bytes, general: Encoder) -> Callable[[bytes], bytes]:
    """numeric(p,s) text -> ``tag`` and its Avro decimal, from the digits: Postgres prints exactly s
    fraction digits. Text of any other shape (NaN, infinities, out of range) goes to ``general``,
    parse then encode, which gives the same bytes or raises the same error."""
    limit: int = 10**precision

    def encode(text: bytes) -> bytes:
        digits = text
        if scale:
            point = len(text) - scale - 1
            if point < 1 or text[point] != 46:  # "."
                return general(text)
            digits = text[:point] + text[point + 1 :]
        try:
            unscaled = int(digits)
        except ValueError:
            return general(text)
        if not -limit < unscaled < limit:
            return general(text)
        data = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
        return tag + _long(len(data)) + data

    return encode


_OPS: Final = {op: _string(op) for op in ("c", "u", "d", "r", "t", "m")}
_ENCODE_ERRORS: Final = (ValueError, TypeError, OverflowError, AttributeError, KeyError, struct.error)
