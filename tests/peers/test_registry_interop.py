"""The Schema Registry wire format against a real registry (Apicurio, Confluent API).

The connector streams the types table (tests/peers/typetable.py) with
``--schema-registry-url``, and a twin streams the same changes as native JSON.
Then: every record is ``0x00`` + a schema id registered under its
``<topic>-key`` / ``<topic>-value`` subject; `cdc consume --schema-registry-url`
prints what the JSON twin holds; confluent-kafka's ``AvroDeserializer`` (the
reader of Kafka Connect sinks, ksqlDB, ...) decodes every record to the same
values as `cdc consume`, except the values its logical types cannot hold
(infinities, BC, year 10000), which it refuses and reads with the logical types
stripped, as docs/types.md says. A schema-evolution sequence checks the
registry's compatibility verdict, per column.
"""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError

from cdc.avro import AvroSerializer
from cdc.consume import RecordDecoder
from cdc.devservers import PostgresServer
from cdc.errors import CdcError, RegistryUnavailable, SchemaError
from cdc.schema_registry import RegistryClient
from tests.consuming import consume
from tests.fix_servers import BrokerHandle, TestDb, new_db
from tests.peers import typetable
from tests.peers.records import as_json, raw_records, strip_logical
from tests.peers.registry import SchemaRegistry
from tests.pipeline import read_topics, settings_for, wait_caught_up
from tests.support import running

pytestmark = pytest.mark.slow


@dataclass
class RegistryRun:
    prefix: str
    json_prefix: str
    topic: str
    records: list[tuple[bytes | None, bytes | None]]
    lines: list[dict[str, Any]]
    errors: list[str]
    registry: SchemaRegistry
    bootstrap_servers: str


@pytest.fixture(scope="module")
def registry_run(
    pg_latest: PostgresServer,
    broker: BrokerHandle,
    schema_registry: SchemaRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RegistryRun]:
    """The types table streamed once through the registry, and once as native JSON."""
    db = new_db(pg_latest)
    prefix = "r" + secrets.token_hex(4)
    try:
        columns = typetable.create(db)
        state_dir = tmp_path_factory.mktemp("state")
        bootstrap = broker.bootstrap_servers
        tables = ["public.alltypes"]
        avro_settings = settings_for(
            db,
            bootstrap,
            prefix,
            state_dir,
            format="avro",
            tables=tables,
            schema_registry_url=schema_registry.url,
        )
        json_settings = settings_for(db, bootstrap, f"{prefix}j", state_dir, format="json", tables=tables)
        with running(avro_settings) as run, running(json_settings) as twin:
            for statement in typetable.statements(columns):
                db.execute(statement)
            wait_caught_up(db, run)
            wait_caught_up(db, twin)
        topic = f"{prefix}.public.alltypes"
        records = raw_records(bootstrap, topic)
        args = [topic, f"{prefix}.messages", "--bootstrap-servers", bootstrap]
        args += ["--schema-registry-url", schema_registry.url, "--from-beginning", "--idle-timeout", "3"]
        lines, errors = consume(args)
        yield RegistryRun(prefix, f"{prefix}j", topic, records, lines, errors, schema_registry, bootstrap)
    finally:
        db.drop()


def test_records_carry_the_ids_of_their_subjects(registry_run: RegistryRun) -> None:
    run = registry_run
    with SchemaRegistryClient({"url": run.registry.url}) as client:
        _check_ids(run, client)


def _check_ids(run: RegistryRun, client: SchemaRegistryClient) -> None:
    value_ids = {int.from_bytes(v[1:5], "big") for _, v in run.records if v is not None}
    key_ids = {int.from_bytes(k[1:5], "big") for k, _ in run.records if k is not None}
    assert all(v is None or v[:1] == b"\x00" for _, v in run.records)
    assert all(k is None or k[:1] == b"\x00" for k, _ in run.records)
    # one table version: one value schema, one key schema, registered under TopicNameStrategy subjects
    assert len(value_ids) == len(key_ids) == 1
    assert client.get_latest_version(f"{run.topic}-value").schema_id == value_ids.pop()
    assert client.get_latest_version(f"{run.topic}-key").schema_id == key_ids.pop()
    assert not [s for s in client.get_subjects() if s.startswith(f"{run.prefix}.schemas")]


def test_cdc_consume_prints_what_the_json_format_prints(registry_run: RegistryRun) -> None:
    run = registry_run
    assert run.errors == []
    twin = read_topics(
        run.bootstrap_servers, [f"{run.json_prefix}.public.alltypes", f"{run.json_prefix}.messages"]
    )
    ours = [line for line in run.lines if line["topic"] in (run.topic, f"{run.prefix}.messages")]
    assert len(ours) == len(twin) == len(run.records) + 1  # the table's records and the message
    by_topic = sorted(ours, key=lambda line: (line["topic"], line["offset"]))
    for line, record in zip(by_topic, sorted(twin, key=lambda r: (r.topic, r.offset)), strict=True):
        assert line["key"] == record.key
        assert _comparable(line["value"]) == _comparable(record.value)


def _comparable(value: Any) -> Any:
    if value is None:
        return None
    skip = ("ts_ms", "ts_us", "ts_ns")
    return {
        **{k: v for k, v in value.items() if k not in skip},
        "source": {k: v for k, v in value["source"].items() if k != "name"},
    }


def _out_of_range(line: dict[str, Any]) -> bool:
    """A record of a row with values that Python's date and datetime cannot hold."""
    value = line["value"]
    rows = [] if value is None else [value.get("after"), value.get("before")]
    # a delete's before has the key alone (REPLICA IDENTITY DEFAULT)
    full = [row for row in rows if row and any(v is not None for k, v in row.items() if k != "id")]
    return bool({row["id"] for row in full} & {2, 3, 4, 20})


def test_avro_deserializer_decodes_what_cdc_consume_prints(registry_run: RegistryRun) -> None:
    """confluent-kafka's AvroDeserializer, with the schemas from the registry alone, reads every record;
    it refuses the out-of-range values (its logical types), which read raw with them stripped."""
    run = registry_run
    with SchemaRegistryClient({"url": run.registry.url}) as client, RegistryClient(run.registry.url) as ours:
        _deserialize_all(run, client, RecordDecoder(registry_client=ours))


def _deserialize_all(run: RegistryRun, client: SchemaRegistryClient, decoder: RecordDecoder) -> None:
    deserialize = AvroDeserializer(client)
    value_ctx = SerializationContext(run.topic, MessageField.VALUE)
    key_ctx = SerializationContext(run.topic, MessageField.KEY)
    lines = [line for line in run.lines if line["topic"] == run.topic]
    refused = 0
    for (key, value), line in zip(run.records, lines, strict=True):
        assert (None if key is None else as_json(deserialize(key, key_ctx))) == line[
            "key"
        ]  # a truncate has none
        if value is None:
            assert line["value"] is None
            continue
        if _out_of_range(line):
            with pytest.raises((SerializationError, ValueError, OverflowError)):
                deserialize(value, value_ctx)
            refused += 1
            continue
        decoded = as_json(deserialize(value, value_ctx))
        for time_field in ("ts_ms", "ts_us", "ts_ns"):
            decoded.pop(time_field), line["value"].pop(time_field)
        assert decoded == line["value"]
    assert refused == 4  # rows 2, 3, 4 and row 2 again under its new key

    # the plain way: fastavro on the body after the 5-byte header, with the writer schema's
    # logical types stripped (AvroDeserializer has no switch for it: a reader schema does not do)
    first = run.records[0][1]
    assert first is not None
    writer = client.get_schema(int.from_bytes(first[1:5], "big")).schema_str
    assert writer is not None
    plain = fastavro.parse_schema(strip_logical(json.loads(writer)))
    for _, value in run.records:
        if value is not None:
            raw = fastavro.schemaless_reader(io.BytesIO(value[5:]), plain, None)
            assert as_json(raw) == as_json(decoder.decode_raw(value)[1])  # (as_json: NaN == NaN)


EVOLUTION = [
    "INSERT INTO evolving VALUES (1, 10)",
    "ALTER TABLE evolving ADD COLUMN note text",  # compatible: a nullable column with a default
    "INSERT INTO evolving VALUES (2, 20, 'two')",
    "ALTER TABLE evolving ALTER COLUMN amount TYPE numeric(10,2)",  # int -> decimal: not compatible
    "INSERT INTO evolving VALUES (3, 30.5, 'three')",
]


def test_schema_evolution_follows_the_registrys_verdict(
    db_latest: TestDb,
    broker: BrokerHandle,
    schema_registry: SchemaRegistry,
    prefix: str,
    state_dir: Path,
) -> None:
    """A compatible change registers a new version; one the registry's rule refuses stops the
    connector with the column named; with the rule relaxed it streams (and the column is still
    reported); AvroDeserializer and `cdc consume` read every version alike."""
    db = db_latest
    db.execute("CREATE TABLE evolving (id int PRIMARY KEY, amount int)")
    topic = f"{prefix}.public.evolving"
    settings = settings_for(
        db,
        broker.bootstrap_servers,
        prefix,
        state_dir,
        format="avro",
        tables=["public.evolving"],
        schema_registry_url=schema_registry.url,
    )
    with running(settings) as run:
        for statement in EVOLUTION:
            db.execute(statement)
        run.thread.join(60)
    assert len(run.errors) == 1 and isinstance(run.errors[0], SchemaError)
    message = str(run.errors[0])
    assert f"refuses the new schema of {topic}-value: not BACKWARD compatible with version 2" in message
    assert "column amount: " in message and "PUT /config/" in message

    schema_registry.set_compatibility("NONE", f"{topic}-value")
    with running(settings) as run:
        wait_caught_up(db, run)
    serializer = run.connector.serializer
    assert isinstance(serializer, AvroSerializer)
    relaxed = [r for r in serializer.registrations if r.schema.subject == f"{topic}-value" and r.problems]
    # the rule (NONE now) let it through; the column is still reported, as the schema topic's check does
    assert [str(p) for r in relaxed for p in r.problems] == [
        "amount: int cannot be read as bytes decimal(10,2) | string"
    ]

    records = raw_records(broker.bootstrap_servers, topic)
    assert len({int.from_bytes(v[1:5], "big") for _, v in records if v is not None}) == 3
    lines, errors = consume(
        [topic, "--bootstrap-servers", broker.bootstrap_servers, "--schema-registry-url", schema_registry.url,
         "--from-beginning", "--idle-timeout", "3"]
    )  # fmt: skip
    assert errors == []
    # at least once: the failed session may not have confirmed what Kafka already held
    positions = {
        (v["source"]["commit_lsn"], v["transaction"]["total_order"]): v for v in (x["value"] for x in lines)
    }
    assert [value["after"] for value in positions.values()] == [
        {"id": 1, "amount": 10},
        {"id": 2, "amount": 20, "note": "two"},
        {"id": 3, "amount": "30.50", "note": "three"},
    ]
    with SchemaRegistryClient({"url": schema_registry.url}) as client:
        deserialize = AvroDeserializer(client)
        ctx = SerializationContext(topic, MessageField.VALUE)
        for (_, value), line in zip(records, lines, strict=True):
            decoded = as_json(deserialize(value, ctx))
            assert decoded["after"] == line["value"]["after"]
            assert decoded["source"] == line["value"]["source"]


@pytest.mark.parametrize(
    ("url", "config", "secret"),
    [
        ("http://cdc:s3cret-in-url@127.0.0.1:1", {}, "s3cret-in-url"),
        ("http://127.0.0.1:1", {"basic.auth.user.info": "cdc:s3cret-basic"}, "s3cret-basic"),
        ("http://127.0.0.1:1", {"bearer.auth.credentials.source": "STATIC_TOKEN",
                                "bearer.auth.token": "s3cret-token", "bearer.auth.logical.cluster": "c",
                                "bearer.auth.identity.pool.id": "p"}, "s3cret-token"),
    ],
)  # fmt: skip
def test_registry_credentials_never_show(url: str, config: dict[str, str], secret: str) -> None:
    try:
        with RegistryClient(url, {**config, "max.retries": "0"}) as client:
            client.check()
    except CdcError as exc:
        assert isinstance(exc, RegistryUnavailable | SchemaError)
        assert secret not in str(exc)
        assert "127.0.0.1:1" in str(exc)
    else:
        pytest.fail("a registry on a closed port answered")
