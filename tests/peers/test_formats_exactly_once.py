"""The registry wire format and ``--compat debezium`` through the writer paths main grew beside them:
``--delivery exactly-once`` (Kafka transactions, Apache Kafka) with shaping (``--mask-columns``).

Each format: an initial snapshot, a key change, deletes of a keyed and of a keyless (REPLICA IDENTITY
FULL) row, a masked column; a read_committed reader sees each record once, in the format's form
(Debezium's key change as delete + tombstone + create, its keyless tombstone), and `cdc consume`
decodes them all.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc.devservers import KafkaServer, KafkaUnavailable
from cdc.errors import ServerError
from tests.consuming import consume
from tests.fix_servers import TestDb
from tests.peers.records import raw_records
from tests.peers.registry import SchemaRegistry
from tests.pipeline import settings_for, wait_caught_up
from tests.support import running

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaServer]:
    try:
        server = KafkaServer.create()
    except KafkaUnavailable as exc:
        pytest.skip(f"no Apache Kafka on this machine: {exc}")
    try:
        server.start()
    except ServerError as exc:
        server.destroy()
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.destroy()


#: format -> (settings, the keyed table's (key id, op) in order, the keyless table's ops)
FORMATS: dict[str, tuple[dict[str, Any], list[tuple[Any, Any]], list[Any]]] = {
    "registry": (
        {"format": "avro", "registry": True},
        [(1, "c"), (2, "c"), (10, "u"), (1, None), (2, "d"), (2, None)],
        ["c", "d"],
    ),
    "debezium_json": (
        {"format": "json", "compat": "debezium"},
        [(1, "c"), (2, "c"), (1, "d"), (1, None), (10, "c"), (2, "d"), (2, None)],
        ["c", "d", None],
    ),
    "debezium_avro": (
        {"format": "avro", "compat": "debezium", "registry": True},
        [(1, "c"), (2, "c"), (1, "d"), (1, None), (10, "c"), (2, "d"), (2, None)],
        ["c", "d", None],
    ),
}


def _payload(value: Any) -> Any:
    """A Debezium JSON value with schemas is {schema, payload}; the others are the payload."""
    if isinstance(value, dict) and set(value) == {"schema", "payload"}:
        return value["payload"]
    return value


@pytest.mark.parametrize("name", list(FORMATS))
def test_exactly_once_and_shaping_in_each_format(
    db_latest: TestDb, kafka: KafkaServer, schema_registry: SchemaRegistry, state_dir: Path, name: str
) -> None:
    db = db_latest
    options, keyed_ops, keyless_ops = FORMATS[name]
    options = dict(options)
    if options.pop("registry", False):
        options["schema_registry_url"] = schema_registry.url
    suffix = secrets.token_hex(3)
    items, notes = f"items_{suffix}", f"notes_{suffix}"
    db.execute(f"CREATE TABLE {items} (id int PRIMARY KEY, name text)")
    db.execute(f"CREATE TABLE {notes} (body text)")
    db.execute(f"ALTER TABLE {notes} REPLICA IDENTITY FULL")
    db.execute(f"INSERT INTO {items} VALUES (3, 'secret three')")  # read by the initial snapshot
    salt = state_dir / "salt"
    salt.write_text("a salt of at least sixteen bytes\n")
    prefix = "x" + secrets.token_hex(4)
    settings = settings_for(
        db, kafka.bootstrap_servers, prefix, state_dir, tables=[f"public.{items}", f"public.{notes}"],
        delivery="exactly-once", snapshot="initial", producer="confluent",
        mask_columns={f"public.{items}": ["name"]}, mask_salt_file=str(salt), **options,
    )  # fmt: skip
    with running(settings) as run:
        db.execute(f"INSERT INTO {items} VALUES (1, 'secret one'), (2, 'secret two')")
        db.execute(f"UPDATE {items} SET id = 10 WHERE id = 1")  # a key change
        db.execute(f"DELETE FROM {items} WHERE id = 2")
        db.execute(f"INSERT INTO {notes} VALUES ('a note')")
        db.execute(f"DELETE FROM {notes}")
        wait_caught_up(db, run)
    items_topic, notes_topic = f"{prefix}.public.{items}", f"{prefix}.public.{notes}"
    # the keyless tombstone: a null key and a null value, as Debezium writes it
    raw = raw_records(kafka.bootstrap_servers, notes_topic, isolation="read_committed")
    assert [(key is None, value is None) for key, value in raw][-1] == (True, name != "registry")
    args = [items_topic, notes_topic, "--bootstrap-servers", kafka.bootstrap_servers]
    args += ["--from-beginning", "--idle-timeout", "3"]
    if "schema_registry_url" in options:
        args += ["--schema-registry-url", schema_registry.url]
    lines, errors = consume(args)
    assert errors == []
    by_topic: dict[str, list[tuple[Any, Any]]] = {items_topic: [], notes_topic: []}
    for line in lines:
        key, value = _payload(line["key"]), _payload(line["value"])
        by_topic[line["topic"]].append((key and key["id"] if line["topic"] == items_topic else key, value))
    ops = [(k, v and v["op"]) for k, v in by_topic[items_topic]]
    # the snapshot's schemas registered ahead of it (publish_schemas -> prepare), its read once
    assert [op for op in ops if op[1] == "r"] == [(3, "r")]
    assert [op for op in ops if op[1] != "r"] == keyed_ops  # each once
    assert [v and v["op"] for _, v in by_topic[notes_topic]] == keyless_ops
    names = [v["after"]["name"] for _, v in by_topic[items_topic] if v and v["after"]]
    assert names and all(len(n) == 64 and "secret" not in n for n in names)  # HMAC-SHA256, hex
