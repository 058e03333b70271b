"""The pure parts of shaping, without servers: patterns and rules, loading transforms, and the
shaper's handling of what transforms return (the real-server tests cover the pipeline around it)."""

from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc.change import ChangeEvent
from cdc.config import Settings, TableColumns, TableConditions, validate
from cdc.errors import ConfigError, SchemaError, TransformError
from cdc.events import JsonSerializer, SourceInfo, Table, TableColumn
from cdc.pgoutput import ReplicaIdentity
from cdc.pgtypes import column_type
from cdc.shaping import Event, Record, output_columns
from cdc.shaping.select import Rules, Selection, TablePattern, condition
from cdc.shaping.shaper import Shaper
from cdc.shaping.transform import load

# -- patterns and rules -------------------------------------------------------------------------


def test_patterns_select_tables() -> None:
    selection = Selection(
        (TablePattern.parse("public.order_*"), TablePattern.parse("sales.*"), TablePattern.parse("users")),
        (TablePattern.parse("sales.tmp_?"),),
    )
    assert selection.pick(
        [
            "public.order_a",
            "public.orders",
            "public.users",
            "sales.x",
            "sales.tmp_1",
            "sales.tmp_10",
            "other.users",
        ]
    ) == ["public.order_a", "public.users", "sales.tmp_10", "sales.x"]
    assert selection.names == ["public.users"]
    assert not selection.exact and not selection.everything
    assert Selection((TablePattern.parse("a.b"),)).exact
    assert Selection().everything and Selection().matches("any.table")
    assert Selection((), (TablePattern.parse("*.audit"),)).pick(["a.audit", "a.b"]) == ["a.b"]


def test_rules_for_a_table() -> None:
    rules = Rules(
        columns={"public.users": ["id", "email"], "public.*": ["id"]},
        excluded={"*.*": ["password"], "public.u*": ["token"]},
        masked={"public.users": ["email"]},
        row_filters={"public.orders": "region = 'eu'"},
    )
    users = rules.for_table("public.users")
    assert users.columns == ("id", "email")  # the exact name beats the pattern
    assert users.masked == ("email",) and users.required == ("id", "email")
    both = Rules({"public.users": ["id", "password"]}, {"*.*": ["password"]}, {}, {}).for_table(
        "public.users"
    )
    assert both.columns == ("id",) and both.excluded == ()
    with pytest.raises(ConfigError, match=r"'a\.\*' and 'a\.t\*' both apply to a\.t1"):
        Rules({}, {}, {}, {"a.*": "x", "a.t*": "y"}).for_table("a.t1")
    assert rules.for_table("other.t").excluded == ("password",)
    assert rules.unmatched(["public.users"]) == ["public.orders"]
    assert condition("  WHERE  region = 'eu' ; ") == "region = 'eu'"
    assert condition("where_clause > 1") == "where_clause > 1"


# -- loading transforms ---------------------------------------------------------------------------


@pytest.fixture
def module() -> Iterator[types.ModuleType]:
    """A module of transforms, importable as ``shaping_unit_transforms``."""
    made = types.ModuleType("shaping_unit_transforms")
    sys.modules[made.__name__] = made
    yield made
    del sys.modules[made.__name__]


def test_loading_transforms(module: types.ModuleType) -> None:
    class Counter:
        def __init__(self) -> None:
            self.seen = 0

        def __call__(self, event: Event) -> Event:
            self.seen += 1
            return event

    module.Counter = Counter  # type: ignore[attr-defined]
    module.value = 3  # type: ignore[attr-defined]
    loaded = load("shaping_unit_transforms:Counter")
    assert isinstance(loaded.function, Counter)  # a class is instantiated once
    with pytest.raises(ConfigError, match=r"cannot load transform nowhere\.at_all:f: ModuleNotFoundError"):
        load("nowhere.at_all:f")
    with pytest.raises(ConfigError, match="shaping_unit_transforms has no missing"):
        load("shaping_unit_transforms:missing")
    with pytest.raises(ConfigError, match="is not callable"):
        load("shaping_unit_transforms:value")
    with pytest.raises(ConfigError, match="unknown column type 'texte'"):
        output_columns(add={"x": "texte"})


# -- the shaper -----------------------------------------------------------------------------------

TABLE = Table(
    16400, "public", "orders", ReplicaIdentity.DEFAULT,
    [TableColumn("id", column_type(23), True), TableColumn("region", column_type(25), False),
     TableColumn("qty", column_type(23), False)],
)  # fmt: skip


def change(op: str = "c", before: list[Any] | None = None, after: list[Any] | None = None) -> ChangeEvent:
    if after is None and op in "cur":
        after = [1, "eu", 5]
    return ChangeEvent(op, TABLE, before, after, 100, 100, 7, 1_700_000_000_000, 1, 1, "7:100")


def shaper(module: types.ModuleType, *functions: Any, **settings: Any) -> Shaper:
    for function in functions:
        setattr(module, function.__name__, function)
    names = [f"shaping_unit_transforms:{f.__name__}" for f in functions]
    return Shaper(
        Settings(topic_prefix="p", transforms=names, **settings),
        JsonSerializer("p", SourceInfo("n", "db")),
        SourceInfo("n", "db"),
    )


def test_what_a_transform_returns(module: types.ModuleType) -> None:
    def none(event: Event) -> None:
        return None

    def two(event: Event) -> list[Event | Record]:
        return [event.copy(topic="p.copy"), Record("p.raw", value="v", key=b"k", headers={"h": "1"})]

    assert shaper(module, none).records(change(), "p.public.orders") == []
    out = shaper(module, two).records(change(), "p.public.orders")
    assert [(o.topic, o.key, o.headers) for o in out] == [
        ("p.copy", b'{"id":1}', None),
        ("p.raw", b"k", [("h", b"1")]),
    ]
    assert orjson.loads(out[0].value or b"")["after"] == {"id": 1, "region": "eu", "qty": 5}


def test_an_unchanged_event_is_written_as_it_came(module: types.ModuleType) -> None:
    def same(event: Event) -> Event:
        return event

    one = shaper(module, same)
    original = change()
    seen: list[ChangeEvent] = []
    real = one.serializer.encode
    one.serializer.encode = lambda event: seen.append(event) or real(event)  # type: ignore[method-assign, func-returns-value]
    one.records(original, "p.public.orders")
    assert seen == [original] and seen[0] is original


def test_key_changes_and_tombstones(module: types.ModuleType) -> None:
    def by_region(event: Event) -> Event:
        row = event.after or event.before
        assert row is not None
        event.key = {"region": row["region"]}
        return event

    one = shaper(module, by_region)
    out = one.records(change("d", before=[1, "eu", 5], after=None), "p.public.orders")
    assert [(o.key, o.value is None) for o in out] == [
        (b'{"region":"eu"}', False),
        (b'{"region":"eu"}', True),
    ]

    # a key the row does not hold: the key as given
    def constant(event: Event) -> Event:
        event.key = {"region": "all"}
        return event

    assert shaper(module, constant).records(change(), "t")[0].key == b'{"region":"all"}'
    with pytest.raises(TransformError, match="key field nope is not a column"):

        def bad(event: Event) -> Event:
            event.key = {"nope": 1}
            return event

        shaper(module, bad).records(change(), "t")


def test_undeclared_columns_and_declared_ones(module: types.ModuleType) -> None:
    def add(event: Event) -> Event:
        assert event.after is not None
        event.after["extra"] = 1
        return event

    with pytest.raises(
        TransformError, match=r"column extra is not in the output of public\.orders: declare it"
    ):
        shaper(module, add).records(change(), "t")
    declared = output_columns(add={"extra": "int8"}, drop=["qty"])(add)

    def drop_qty(event: Event) -> Event:
        assert event.after is not None
        event.after.pop("qty")
        return event

    out = shaper(module, declared, drop_qty).records(change(), "t")
    assert orjson.loads(out[0].value or b"")["after"] == {"id": 1, "region": "eu", "extra": 1}


def test_errors_under_each_policy(module: types.ModuleType) -> None:
    def boom(event: Event) -> Event:
        raise KeyError("nope")

    with pytest.raises(
        TransformError,
        match=r"transform shaping_unit_transforms:boom failed on public.orders at 0/64:1: KeyError",
    ):
        shaper(module, boom).records(change(), "t")
    skipping = shaper(module, boom, on_transform_error="skip")
    assert skipping.records(change(), "t") == []
    assert skipping.counts == {"transform_errors:shaping_unit_transforms:boom": 1}
    [letter] = shaper(module, boom, on_transform_error="dead-letter").records(change(), "p.public.orders")
    headers = dict(letter.headers or [])
    assert (
        letter.topic == "p.dead-letter" and headers["stage"] == b"transform" and headers["key"] == b'{"id":1}'
    )
    assert orjson.loads(letter.value or b"")["after"]["qty"] == 5

    def wrong_type(event: Event) -> int:
        return 3

    with pytest.raises(TransformError, match="returned a int: expected an Event"):
        shaper(module, wrong_type).records(change(), "t")


def test_masks(module: types.ModuleType, tmp_path: Path) -> None:
    salt = tmp_path / "salt"
    salt.write_text("0123456789abcdef0123456789abcdef")
    masks = TableColumns({"public.orders": ["region", "qty"]})
    hashed = Shaper(
        Settings(mask_columns=masks, mask_salt_file=str(salt)),
        JsonSerializer("p", SourceInfo("n", "d")),
        SourceInfo("n", "d"),
    )
    after = orjson.loads(hashed.records(change(), "t")[0].value or b"")["after"]
    assert after["id"] == 1 and len(after["region"]) == 64 and len(after["qty"]) == 64
    fixed = Shaper(
        Settings(mask_columns=masks), JsonSerializer("p", SourceInfo("n", "d")), SourceInfo("n", "d")
    )
    assert orjson.loads(fixed.records(change(), "t")[0].value or b"")["after"]["region"] == "****"
    placeholder = change(after=[1, "__cdc_unavailable_value", None])
    assert (
        orjson.loads(fixed.records(placeholder, "t")[0].value or b"")["after"]["region"]
        == "__cdc_unavailable_value"
    )
    key_masked = Shaper(
        Settings(mask_columns=TableColumns({"public.orders": ["id"]})),
        JsonSerializer("p", SourceInfo("n", "d")),
        SourceInfo("n", "d"),
    )
    with pytest.raises(ConfigError, match=r"masks key column id of public\.orders with a fixed text"):
        key_masked.records(change(), "t")
    with pytest.raises(ConfigError, match="holds 3 bytes: use at least 16"):
        (tmp_path / "short").write_text("abc")
        Shaper(
            Settings(mask_columns=masks, mask_salt_file=str(tmp_path / "short")),
            JsonSerializer("p", SourceInfo("n", "d")),
            SourceInfo("n", "d"),
        )


def test_a_record_that_cannot_be_encoded(module: types.ModuleType) -> None:
    def text_qty(event: Event) -> Event:
        assert event.after is not None
        event.after["qty"] = "many"
        return event

    from cdc.avro import AvroSerializer

    source = SourceInfo("n", "d")
    module.text_qty = text_qty  # type: ignore[attr-defined]
    settings = Settings(topic_prefix="p", transforms=["shaping_unit_transforms:text_qty"])
    with pytest.raises(SchemaError, match="column qty"):
        Shaper(settings, AvroSerializer("p", source), source).records(change(), "t")
    settings.on_record_error = "dead-letter"
    [letter] = Shaper(settings, AvroSerializer("p", source), source).records(change(), "t")
    assert dict(letter.headers or [])["stage"] == b"encode"


def test_row_filter_settings_strip_where() -> None:
    settings = Settings(row_filters=TableConditions({"public.t": "WHERE a = 1"}))
    assert Rules.from_settings(settings).for_table("public.t").row_filter == "a = 1"


# -- the outbox event router ----------------------------------------------------------------------

OUTBOX = Table(
    16500, "public", "outbox", ReplicaIdentity.DEFAULT,
    [TableColumn("id", column_type(2950), True), TableColumn("aggregatetype", column_type(25), False),
     TableColumn("aggregateid", column_type(20), False), TableColumn("type", column_type(25), False),
     TableColumn("payload", column_type(17), False), TableColumn("ts", column_type(1184), False)],
)  # fmt: skip


def outbox_change(op: str, aggregatetype: str = "order", payload: Any = b"\x00avro") -> ChangeEvent:
    row = ["0b4e-1", aggregatetype, 42, "Placed", payload, 1_700_000_000_000_000]
    before, after = (row, None) if op == "d" else (None, row)
    return ChangeEvent(op, OUTBOX, before, after, 100, 100, 7, 1_700_000_000_000, 1, 1, "7:100")


def without_processing_time(records: list[Any]) -> list[Any]:
    """The records with their JSON values' top-level ts_ms / ts_us / ts_ns (wall clock) dropped."""
    out = []
    for record in records:
        value = orjson.loads(record.value)
        for field in ("ts_ms", "ts_us", "ts_ns"):
            assert isinstance(value.pop(field), int)
        out.append(dataclasses.replace(record, value=value))
    return out


def test_the_outbox_router(module: types.ModuleType) -> None:
    """Only with an outbox configured is the shaper on; other events pass the router untouched (the
    plain encoding); an insert becomes one record, updates and deletes nothing; a bytea payload is
    written untouched, the key is the aggregate id as text; what cannot be routed is an error."""
    assert not Shaper.wanted(Settings()) and Shaper.wanted(Settings(outbox_messages=True))
    router = shaper(
        module,
        outbox_table="outbox",
        outbox_fields={"timestamp": "ts"},
        outbox_topic="{prefix}.{type}.events",
    )
    plain = Shaper(
        Settings(topic_prefix="p", on_record_error="dead-letter"), router.serializer, router.source
    )
    # the two calls may fall in different milliseconds: the top-level ts_* are the processing time
    assert without_processing_time(router.records(change(), "p.public.orders")) == (
        without_processing_time(plain.records(change(), "p.public.orders"))
    )
    assert router.outbox is not None and not router.outbox.takes(change())
    [out] = router.records(outbox_change("c"), "p.public.outbox")
    assert (out.topic, out.key, out.value) == ("p.Placed.events", b"42", b"\x00avro")
    assert out.headers == [
        ("id", b"0b4e-1"),
        ("type", b"Placed"),
        ("timestamp", b"2023-11-14T22:13:20.000000Z"),
    ]
    assert router.records(outbox_change("u"), "t") == router.records(outbox_change("d"), "t") == []
    with pytest.raises(TransformError, match=r"transform outbox failed .* makes 'bad topic!'"):
        shaper(module, outbox_table="outbox", outbox_topic="{aggregatetype}").records(
            outbox_change("c", "bad topic!"), "t"
        )
    message = ChangeEvent(
        "m", None, None, None, 100, 100, 7, 0, 1, 0, "7:100", None, "outbox",
        b'{"aggregatetype": "a", "aggregateid": 5, "type": "T", "payload": {"x": [1]}}',
    )  # fmt: skip
    [routed] = router.records(message, "p.messages")
    assert (routed.topic, routed.key, routed.value) == ("p.T.events", b"5", b'{"x":[1]}')
    assert dict(routed.headers or [])["id"] == b"64:1"  # the position stands in for a missing id
    with pytest.raises(TransformError, match="outbox field type is missing"):
        router.records(
            dataclasses.replace(message, message_content=b'{"aggregatetype": "a", "aggregateid": 1}'), ""
        )
    with pytest.raises(ConfigError, match="outbox_field 'kind'"):
        validate(Settings(outbox_table="outbox", outbox_fields={"kind": "k"}))
