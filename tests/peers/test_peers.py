"""Smoke tests of the two interoperability peers: a Schema Registry and Debezium.

The first run downloads them from Maven Central into ``~/.cache/cdc/peers``
(about 200 MB); later runs start them from there.
"""

from __future__ import annotations

import decimal
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.fix_servers import TestDb
from tests.peers.debezium import Debezium, Record
from tests.peers.registry import SchemaRegistry

# the peers are JVM servers started here, not by tests/fix_servers.py
pytestmark = [pytest.mark.slow, pytest.mark.servers]


VALUE_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Value",
    "namespace": "cdc.public.orders",
    "connect.name": "cdc.public.orders.Value",
    "fields": [
        {"name": "id", "type": "int", "pg.oid": 23},
        {
            "name": "amount",
            "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}],
            "default": None,
        },
        {
            "name": "at",
            "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}],
            "default": None,
        },
        {"name": "odd_name", "type": ["null", "string"], "default": None, "pg.name": "odd name"},
    ],
}


def test_registry_speaks_confluent(schema_registry: SchemaRegistry) -> None:
    registry = schema_registry
    sr = pytest.importorskip("confluent_kafka.schema_registry")
    avro = pytest.importorskip("confluent_kafka.schema_registry.avro")
    from confluent_kafka.serialization import MessageField, SerializationContext

    with sr.SchemaRegistryClient({"url": registry.url}) as client:
        _check_registry(client, sr, avro, SerializationContext("cdc.public.orders", MessageField.VALUE))


def _check_registry(client: Any, sr: Any, avro: Any, ctx: Any) -> None:
    text = json.dumps(VALUE_SCHEMA)
    schema_id = client.register_schema("cdc.public.orders-value", sr.Schema(text, "AVRO"))
    assert client.register_schema("cdc.public.orders-value", sr.Schema(text, "AVRO")) == schema_id

    stored = json.loads(client.get_schema(schema_id).schema_str)
    assert stored["connect.name"] == "cdc.public.orders.Value"
    assert stored["fields"][0]["pg.oid"] == 23
    assert stored["fields"][1]["type"][1] == VALUE_SCHEMA["fields"][1]["type"][1]
    assert stored["fields"][3]["pg.name"] == "odd name"

    assert client.get_compatibility() == "BACKWARD"
    added = dict(
        VALUE_SCHEMA,
        fields=[*VALUE_SCHEMA["fields"], {"name": "n", "type": ["null", "int"], "default": None}],
    )
    required = dict(VALUE_SCHEMA, fields=[*VALUE_SCHEMA["fields"], {"name": "n", "type": "int"}])
    subject = "cdc.public.orders-value"
    assert client.test_compatibility(subject, sr.Schema(json.dumps(added), "AVRO")) is True
    assert client.test_compatibility(subject, sr.Schema(json.dumps(required), "AVRO")) is False
    with pytest.raises(sr.SchemaRegistryError) as refused:
        client.register_schema(subject, sr.Schema(json.dumps(required), "AVRO"))
    assert refused.value.http_status_code == 409

    serializer = avro.AvroSerializer(client, text, conf={"auto.register.schemas": False})
    deserializer = avro.AvroDeserializer(client)
    row = {
        "id": 7,
        "amount": decimal.Decimal("12.34"),
        "at": datetime(2024, 2, 29, 1, 2, 3, 456789, tzinfo=UTC),
    }
    data = serializer({**row, "odd_name": "x"}, ctx)
    assert data[0] == 0
    assert int.from_bytes(data[1:5], "big") == schema_id
    assert deserializer(data, ctx) == {**row, "odd_name": "x"}


@pytest.fixture
def debezium_db(db_latest: TestDb) -> TestDb:
    db_latest.execute(
        "CREATE TABLE public.items (id int PRIMARY KEY, d date, ts timestamptz, n numeric(10,2), "
        "tags text[], doc jsonb, big text)"
    )
    db_latest.execute(
        "INSERT INTO public.items VALUES (1, '2024-02-29', '2024-02-29 13:14:15.123456+01', 12.34, "
        "'{a,b}', '{\"k\": 1}', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 1000) g))"
    )
    return db_latest


def _ops(records: list[Record]) -> list[tuple[str, str | None]]:
    return [(r.topic, r.op) for r in records]


def test_debezium_emits_every_kind_of_event(debezium_db: TestDb) -> None:
    db = debezium_db
    with Debezium.start(db.dsn, ["public.items"]) as dbz:
        snapshot = dbz.wait_for(lambda rs: len(rs) >= 1)
        assert _ops(snapshot) == [("dbz.public.items", "r")]
        first = snapshot[0]
        assert first.key_plain == {"id": 1}
        assert first.after is not None
        assert first.after["d"] == 19782  # days since the epoch
        assert first.after["ts"] == "2024-02-29T12:14:15.123456Z"
        assert first.after["tags"] == ["a", "b"]
        assert first.after["doc"] == '{"k": 1}'
        # schemas.enable=true wraps the same payload
        assert first.value["payload"] == first.value_plain
        assert first.key["schema"]["name"] == "dbz.public.items.Key"

        db.execute("INSERT INTO public.items (id, n) VALUES (2, 1.5)")
        db.execute("UPDATE public.items SET n = 2.5 WHERE id = 2")
        db.execute("UPDATE public.items SET id = 3 WHERE id = 2")  # primary key change
        db.execute("DELETE FROM public.items WHERE id = 3")
        db.execute("UPDATE public.items SET n = 0 WHERE id = 1")  # big is TOASTed and unchanged
        db.execute("SELECT pg_logical_emit_message(true, 'outbox', 'hello')")
        db.execute("TRUNCATE public.items")
        records = dbz.sync()[1:]

    items, message = "dbz.public.items", "dbz.message"
    assert _ops(records) == [
        (items, "c"),
        (items, "u"),
        (items, "d"),  # the primary key change: delete of the old key, its tombstone, create
        (items, None),
        (items, "c"),
        (items, "d"),
        (items, None),
        (items, "u"),
        (message, "m"),
        (items, "t"),
    ]
    pk_delete, pk_create = records[2], records[4]
    assert (pk_delete.key_plain, pk_create.key_plain) == ({"id": 2}, {"id": 3})
    assert pk_delete.source["txId"] == pk_create.source["txId"]
    toast = records[7]
    assert toast.after is not None
    assert toast.after["big"] == "__debezium_unavailable_value"
    assert records[8].value_plain["message"] == {"prefix": "outbox", "content": "aGVsbG8="}
    assert records[9].key is None
