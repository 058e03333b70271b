"""``--compat debezium`` against Debezium itself: the same database, the same changes, every event.

Debezium 3.6's PostgreSQL connector (tests/peers/debezium.py, with the same
topic prefix) and `cdc --compat debezium --format json` stream the types table
of tests/peers/typetable.py (a column per row of docs/types.md) and its
changes: inserts of ordinary, special and out-of-range values, an update that
leaves TOASTed values alone, a primary key change, a delete, a logical message
and a truncate. Then every record is compared, topic by topic: keys and values
with their Connect schemas (``schemas.enable``) and payloads, value by value.
The only differences allowed are the ones docs/types.md lists as Debezium's
own bugs (`DIFFERENCES`), and for each of them cdc's value is checked to be the
right one.

One Debezium per option set (a module fixture): its defaults, and the
non-default ``decimal.handling.mode`` / ``time.precision.mode`` /
``binary.handling.mode`` / ``interval.handling.mode`` choices spread over two
more sets.
"""

from __future__ import annotations

import io
import itertools
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import fastavro
import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from cdc import __version__ as cdc_version
from cdc.debezium import DebeziumAvroSerializer
from cdc.devservers import PgInstall, PostgresServer
from cdc.schema_registry import RegistryClient
from tests.consuming import consume
from tests.fix_servers import PG_INSTALLS, BrokerHandle, ServerPool, new_db
from tests.peers import typetable
from tests.peers.debezium import SYNC_PREFIX, Debezium, Record
from tests.peers.jvm import PeerError
from tests.peers.records import as_json, raw_records, strip_logical
from tests.peers.registry import SchemaRegistry
from tests.pipeline import read_topics, settings_for, wait_caught_up
from tests.support import running

pytestmark = pytest.mark.slow

#: option sets: Debezium's properties; cdc takes the same under its own names (`_cdc_settings`)
OPTION_SETS: dict[str, dict[str, str]] = {
    "defaults": {},
    "string-micro-base64": {
        "decimal.handling.mode": "string",
        "time.precision.mode": "adaptive_time_microseconds",
        "binary.handling.mode": "base64",
        "interval.handling.mode": "string",
    },
    "double-connect-hex-txmeta": {
        "decimal.handling.mode": "double",
        "time.precision.mode": "connect",
        "binary.handling.mode": "hex",
        "provide.transaction.metadata": "true",
    },
    "isostring-urlsafe-heartbeat": {
        "time.precision.mode": "isostring",
        "binary.handling.mode": "base64-url-safe",
        "heartbeat.interval.ms": "300",
    },
}

#: a keyless table (REPLICA IDENTITY FULL): whole rows before, and Debezium's null-key tombstone
NOKEY = [
    "CREATE TABLE nokey (a int, b text)",
    "ALTER TABLE nokey REPLICA IDENTITY FULL",
]
NOKEY_CHANGES = [
    "INSERT INTO nokey VALUES (1, 'x')",
    "UPDATE nokey SET b = 'y'",
    "DELETE FROM nokey",
]
TABLES = ["public.alltypes", "public.nokey"]


def _cdc_settings(options: dict[str, str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for key, value in options.items():
        if key == "provide.transaction.metadata":
            settings["transaction_metadata"] = value == "true"
        elif key == "heartbeat.interval.ms":
            settings["heartbeat_interval"] = int(value) / 1000
        else:
            settings[key.replace(".", "_")] = value
    return settings


def _with_libxml(install: PgInstall) -> bool:
    try:
        out = subprocess.run(
            [install.tool("pg_config"), "--configure"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return "--with-libxml" in out.stdout


@pytest.fixture(scope="module")
def compat_server(server_pool: ServerPool) -> PostgresServer:
    """The newest Postgres (14+, for logical messages) built with libxml, else the newest."""
    candidates = [i for i in PG_INSTALLS if i.major >= 14]
    if not candidates:
        pytest.skip("Debezium needs PostgreSQL 14+ for logical messages; none found")
    chosen = next((i for i in candidates if _with_libxml(i)), candidates[0])
    return server_pool.get(chosen)


@dataclass
class CompatRun:
    name: str
    columns: dict[str, str]
    options: dict[str, str]
    debezium: list[Record]
    json: dict[str, list[Any]]  # topic -> cdc's records, JSON with schemas (skip_ops none, as Debezium here)
    plain: dict[str, list[Any]]  # the same without schemas, and the default skip_ops (t)
    avro: dict[str, list[tuple[bytes | None, bytes | None]]]  # through the registry
    registered: dict[str, dict[str, Any]]  # subject -> the Avro schema cdc registered
    registry_url: str
    prefix: str


def _topics(prefix: str, options: dict[str, str]) -> list[str]:
    topics = [f"{prefix}.public.alltypes", f"{prefix}.public.nokey", f"{prefix}.message"]
    if options.get("provide.transaction.metadata") == "true":
        topics.append(f"{prefix}.transaction")
    if "heartbeat.interval.ms" in options:
        topics.append(f"__debezium-heartbeat.{prefix}")
    return topics


@pytest.fixture(scope="module", params=list(OPTION_SETS), ids=list(OPTION_SETS))
def compat_run(
    request: pytest.FixtureRequest,
    compat_server: PostgresServer,
    broker: BrokerHandle,
    schema_registry: SchemaRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CompatRun]:
    """Debezium and three cdc --compat debezium connectors (JSON with schemas; JSON without, default
    skip_ops; Avro through the registry) on the same database and changes."""
    options = OPTION_SETS[request.param]
    db = new_db(compat_server)
    prefix = "d" + secrets.token_hex(4)
    bootstrap = broker.bootstrap_servers
    try:
        columns = typetable.create(db)
        for statement in NOKEY:
            db.execute(statement)

        def settings(topic_prefix: str, **more: Any) -> Any:
            state = tmp_path_factory.mktemp("state")
            values = {"tables": TABLES, "compat": "debezium", **_cdc_settings(options), **more}
            return settings_for(db, bootstrap, topic_prefix, state, **values)

        # the launcher asks Debezium for truncates too (skipped.operations=none): so do these two
        with_schemas = settings(prefix, format="json", skip_ops=["none"])
        plain = settings(f"{prefix}p", format="json", json_schemas=False)
        avro = settings(
            f"{prefix}a", format="avro", skip_ops=["none"], schema_registry_url=schema_registry.url
        )
        try:
            debezium = Debezium.start(db.dsn, TABLES, topic_prefix=prefix, config=options)
        except PeerError as exc:
            pytest.skip(f"no Debezium peer: {exc}")
        with debezium, running(with_schemas) as one, running(plain) as two, running(avro) as three:
            for statement in [*typetable.statements(columns), *NOKEY_CHANGES]:
                db.execute(statement)
            records = debezium.sync()
            if options.get("provide.transaction.metadata") == "true":  # the END after the sync message
                records = debezium.wait_for(_transactions_ended)
            for run in (one, two, three):
                wait_caught_up(db, run)
        serializer = three.connector.serializer
        assert isinstance(serializer, DebeziumAvroSerializer)
        registered = {r.schema.subject: r.schema.schema for r in serializer.registrations}
        yield CompatRun(
            request.param,
            columns,
            options,
            records,
            _by_topic(read_topics(bootstrap, _topics(prefix, options))),
            _by_topic(read_topics(bootstrap, _topics(f"{prefix}p", options))),
            {t: raw_records(bootstrap, t) for t in _topics(f"{prefix}a", options)},
            registered,
            schema_registry.url,
            prefix,
        )
    finally:
        db.drop()


def _transactions_ended(records: list[Record]) -> bool:
    statuses = [r.value_plain["status"] for r in records if r.topic.endswith(".transaction")]
    return statuses.count("BEGIN") == statuses.count("END")


def _by_topic(records: list[Any]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for record in records:
        found.setdefault(record.topic, []).append(record)
    return found


def diff(path: str, ours: Any, theirs: Any, out: list[str]) -> None:
    """Every leaf where ``ours`` and ``theirs`` differ, as ``path: ours != theirs``."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs), key=str):
            if key not in theirs:
                out.append(f"{path}.{key}: only cdc has it ({_short(ours[key])})")
            elif key not in ours:
                out.append(f"{path}.{key}: only Debezium has it ({_short(theirs[key])})")
            else:
                diff(f"{path}.{key}", ours[key], theirs[key], out)
    elif _fields(ours) and _fields(theirs):  # a struct's fields: by name
        diff(path, {f["field"]: f for f in ours}, {f["field"]: f for f in theirs}, out)
    elif isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            diff(f"{path}[{i}]", a, b, out)
    elif ours != theirs or type(ours) is not type(theirs):
        out.append(f"{path}: cdc {_short(ours)} != Debezium {_short(theirs)}")


def _fields(value: Any) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(f, dict) and "field" in f for f in value)
    )


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) < 120 else text[:117] + "..."


def _theirs(run: CompatRun) -> dict[str, list[Record]]:
    """Debezium's records by topic; heartbeats (as many as time allows) apart, in their own test."""
    found: dict[str, list[Record]] = {}
    for record in run.debezium:
        if not record.topic.startswith("__debezium-heartbeat."):
            found.setdefault(record.topic, []).append(record)
    return found


def _renamed(value: Any, ours: str, theirs: str) -> Any:
    """``value`` with cdc's topic prefix ``ours`` (a twin's) spelled as Debezium's ``theirs``."""
    if isinstance(value, dict):
        return {k: _renamed(v, ours, theirs) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, ours, theirs) for v in value]
    if isinstance(value, str) and (value == ours or value.startswith(ours + ".")):
        return theirs + value[len(ours) :]
    return value


def test_json_with_schemas_is_debeziums(compat_run: CompatRun) -> None:
    """Every record equal to Debezium's through the JsonConverter with schemas.enable: key and value,
    schema and payload, but for the documented differences (each checked to hold cdc's right value,
    and to occur)."""
    run = compat_run
    problems: list[str] = []
    seen: set[str] = set()
    theirs = _theirs(run)
    for topic in sorted(set(theirs) | {t for t in run.json if not t.startswith("__debezium-heartbeat.")}):
        ours = [r for r in run.json.get(topic, []) if _not_sync(r.value)]
        dbz = theirs.get(topic, [])
        if len(ours) != len(dbz):
            problems.append(f"{topic}: cdc has {len(ours)} records{_offsets(ours)}, Debezium {len(dbz)}")
        for n, (a, b) in enumerate(zip(ours, dbz, strict=False)):
            where = f"{topic}[{n}]"
            key = _reconcile_side_record(a.key, b.key, seen)
            diff(f"{where}.key", key, b.key, problems)
            if a.value is None or b.value is None:
                diff(f"{where}.value", a.value, b.value, problems)
                continue
            schema = _drop_omitted_connect(a.value["schema"], where, problems)
            payload = _reconcile(
                run, _without_times(a.value["payload"]), b.value["payload"], where, problems, seen
            )
            diff(f"{where}.value.schema", schema, b.value["schema"], problems)
            diff(f"{where}.value.payload", payload, _without_times(b.value["payload"]), problems)
    assert not problems, "\n".join(problems)
    expected = _expected_differences(run)
    assert seen == expected, (
        f"documented differences not seen: {expected - seen}; unexpected: {seen - expected}"
    )


def test_json_without_schemas_skips_truncates_by_default(compat_run: CompatRun) -> None:
    """schemas.enable=false: the payloads alone; and the default --skip-ops (Debezium's
    skipped.operations default, t) leaves the truncate out."""
    run = compat_run
    problems: list[str] = []
    seen: set[str] = set()
    theirs = _theirs(run)
    # the truncate's transaction has no event left: no BEGIN and END either
    truncated = {str(r.source["txId"]) for r in run.debezium if r.op == "t"}
    for topic in sorted(theirs):
        ours = [r for r in run.plain.get(topic.replace(run.prefix, run.prefix + "p", 1), [])]
        ours = [r for r in ours if _not_sync(r.value)]
        dbz = [r for r in theirs[topic] if r.op != "t"]
        dbz = [r for r in dbz if str((r.key_plain or {}).get("id", "")).split(":", 1)[0] not in truncated]
        assert len(dbz) < len(theirs[topic]) or not topic.endswith(".alltypes")  # there is a truncate
        if len(ours) != len(dbz):
            problems.append(
                f"{topic}: cdc has {len(ours)} records{_offsets(ours)}, Debezium {len(dbz)} "
                "(truncates left out)"
            )
        for n, (a, b) in enumerate(zip(ours, dbz, strict=False)):
            where = f"{topic}[{n}]"
            key = _reconcile_side_record(_renamed(a.key, run.prefix + "p", run.prefix), b.key_plain, seen)
            diff(f"{where}.key", key, b.key_plain, problems)
            if a.value is None or b.value_plain is None:
                diff(f"{where}.value", a.value, b.value_plain, problems)
                continue
            ours_value = _renamed(_without_times(a.value), run.prefix + "p", run.prefix)
            payload = _reconcile(run, ours_value, b.value_plain, where, problems, seen)
            diff(f"{where}.value", payload, _without_times(b.value_plain), problems)
    assert not problems, "\n".join(problems)


def test_avro_through_the_registry_is_debeziums(compat_run: CompatRun) -> None:
    """cdc's registered schemas are the ones the AvroConverter makes of Debezium's (AvroData), and
    its records, read with those schemas, hold Debezium's values."""
    run = compat_run
    problems: list[str] = []
    seen: set[str] = set()
    theirs = _theirs(run)
    ours_prefix = run.prefix + "a"
    with RegistryClient(run.registry_url) as registry:
        writers: dict[int, Any] = {}

        def decode(data: bytes | None) -> Any:
            if data is None:
                return None
            schema_id = int.from_bytes(data[1:5], "big")
            if schema_id not in writers:
                writers[schema_id] = fastavro.parse_schema(
                    strip_logical(orjson.loads(registry.schema(schema_id)))
                )
            datum = fastavro.schemaless_reader(io.BytesIO(data[5:]), writers[schema_id], None)
            return _renamed(as_json(datum), ours_prefix, run.prefix)

        for topic in sorted(theirs):
            ours = [
                (decode(k), decode(v)) for k, v in run.avro.get(topic.replace(run.prefix, ours_prefix, 1), [])
            ]
            ours = [(k, v) for k, v in ours if _not_sync(v)]
            dbz = theirs[topic]
            if len(ours) != len(dbz):
                problems.append(f"{topic}: cdc has {len(ours)} records, Debezium {len(dbz)}")
            for n, ((key, value), b) in enumerate(zip(ours, dbz, strict=False)):
                where = f"{topic}[{n}]"
                their_key = _avro_body(b.key_avro, b.key_avro_data)
                diff(f"{where}.key", _reconcile_side_record(key, their_key, seen), their_key, problems)
                their_value = _avro_body(b.value_avro, b.value_avro_data)
                if value is None or their_value is None:
                    diff(f"{where}.value", value, their_value, problems)
                    continue
                reconciled = _reconcile(run, _without_times(value), their_value, where, problems, seen)
                diff(f"{where}.value", reconciled, _without_times(their_value), problems)
                for kind, avro in (("key", b.key_avro), ("value", b.value_avro)):
                    registered = run.registered.get(f"{topic.replace(run.prefix, ours_prefix, 1)}-{kind}")
                    if avro is not None:
                        mine = _drop_omitted_avro(
                            _renamed(registered, ours_prefix, run.prefix), where, problems
                        )
                        diff(f"{where}.{kind} schema", mine, avro, problems)
    assert not problems, "\n".join(problems)


def _avro_body(schema: Any, data: bytes | None) -> Any:
    """Debezium's record as AvroData wrote it, read raw (logical types stripped), as JSON values."""
    if schema is None or data is None:
        return None
    parsed = fastavro.parse_schema(strip_logical(schema))
    return as_json(fastavro.schemaless_reader(io.BytesIO(data), parsed, None))


def _offsets(records: list[Any]) -> str:
    """Where cdc's records lie in the topic: a gap says Kafka lost one, none that cdc never sent it."""
    offsets = [r.offset for r in records]
    if not offsets:
        return ""
    gaps = [f"{a + 1}..{b - 1}" for a, b in itertools.pairwise(offsets) if b > a + 1]
    missing = f", missing {', '.join(gaps)}" if gaps else ", no gap"
    return f" (offsets {offsets[0]}..{offsets[-1]}{missing})"


def _not_sync(value: Any) -> bool:
    """Not the record of the logical message the Debezium launcher writes to know it is caught up."""
    payload = value.get("payload", value) if isinstance(value, dict) else None
    message = payload.get("message") if isinstance(payload, dict) else None
    return not (isinstance(message, dict) and message.get("prefix") == SYNC_PREFIX)


def _without_times(value: Any) -> Any:
    """Processing times differ between two connectors."""
    if not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if k not in ("ts_ms", "ts_us", "ts_ns") or "source" not in value}


# -- the documented differences (docs/types.md, "Where cdc differs from Debezium") ------------------

INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)


def _expected_differences(run: CompatRun) -> set[str]:
    expected = {"version", "omitted columns", "name", "infinite dates", "2-D arrays"}
    if run.options.get("time.precision.mode") == "isostring":
        expected.add("infinite timestamps as text")
    if run.options.get("binary.handling.mode", "bytes").startswith("base64"):
        expected.add("bytea placeholder")
    if run.options.get("provide.transaction.metadata") == "true":
        expected |= {"transaction ids", "message collection"}
    return expected


def _drop_omitted_connect(schema: Any, where: str, problems: list[str]) -> Any:
    """The value's Connect schema without the columns Debezium leaves out (checked to be strings)."""
    schema = orjson.loads(orjson.dumps(schema))
    for field in schema.get("fields", []):
        if field["field"] in ("before", "after"):
            kept = []
            for column in field["fields"]:
                if column["field"] in typetable.DEBEZIUM_OMITS:
                    if column != {"type": "string", "optional": True, "field": column["field"]}:
                        problems.append(f"{where}: column {column['field']} is not a string: {column}")
                    continue
                kept.append(column)
            field["fields"] = kept
    return schema


def _drop_omitted_avro(schema: Any, where: str, problems: list[str]) -> Any:
    """The value's Avro schema without the columns Debezium leaves out (checked to be strings)."""
    schema = orjson.loads(orjson.dumps(schema))
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return schema
    for field in schema["fields"]:
        if field["name"] == "before" and isinstance(field["type"], list):
            row = field["type"][1]
            kept = []
            for column in row["fields"]:
                if column["name"] in typetable.DEBEZIUM_OMITS:
                    if column != {"name": column["name"], "type": ["null", "string"], "default": None}:
                        problems.append(f"{where}: column {column['name']} is not a string: {column}")
                    continue
                kept.append(column)
            row["fields"] = kept
    return schema


def _reconcile_side_record(ours: Any, theirs: Any, seen: set[str]) -> Any:
    """A key (or transaction record) with the transaction id, which Debezium gives per event, as its."""
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        return ours
    payload, their_payload = ours.get("payload", ours), theirs.get("payload", theirs)
    if not isinstance(payload, dict) or not isinstance(their_payload, dict) or "id" not in payload:
        return ours
    ours_id, their_id = str(payload["id"]), str(their_payload.get("id", ""))
    if ours_id != their_id and ours_id.split(":", 1)[0] == their_id.split(":", 1)[0]:  # the same xid
        ours = orjson.loads(orjson.dumps(ours))
        (ours.get("payload", ours))["id"] = their_payload["id"]
        seen.add("transaction ids")
    return ours


def _reconcile(
    run: CompatRun, payload: Any, theirs: Any, where: str, problems: list[str], seen: set[str]
) -> Any:
    """``payload`` with each documented difference from Debezium's ``theirs`` checked, then replaced
    by Debezium's value (so that what is left to compare must be equal)."""
    if not isinstance(payload, dict) or not isinstance(theirs, dict):
        return payload
    payload = orjson.loads(orjson.dumps(payload))  # a copy
    source, their_source = payload.get("source"), theirs.get("source")
    versions = (source or {}).get("version"), (their_source or {}).get("version")
    if versions[0] == cdc_version and str(versions[1]).endswith(".Final"):
        source["version"] = versions[1]
        seen.add("version")
    if "status" in payload:  # a record of the transaction topic
        payload = _reconcile_side_record(payload, theirs, seen)
        ours_collections, their_collections = payload.get("data_collections"), theirs.get("data_collections")
        names = [c["data_collection"] for c in ours_collections or []]
        if their_collections and ours_collections != their_collections and names == ["messages"]:
            payload["data_collections"] = their_collections
            seen.add("message collection")
        return payload
    block, their_block = payload.get("transaction"), theirs.get("transaction")
    if (
        isinstance(block, dict)
        and isinstance(their_block, dict)
        and block["id"] != their_block["id"]
        and block["id"].split(":")[0] == their_block["id"].split(":")[0]  # the same xid
    ):
        block["id"] = their_block["id"]
        seen.add("transaction ids")
    iso = run.options.get("time.precision.mode") == "isostring"
    for side in ("before", "after"):
        row, their_row = payload.get(side), theirs.get(side)
        if not isinstance(row, dict) or not isinstance(their_row, dict):
            continue
        for column, text in typetable.DEBEZIUM_OMITS.items():
            if column in row and column not in their_row:
                if row[column] not in (text, None):
                    problems.append(f"{where}.{side}.{column}: {row[column]!r}, not the text {text!r}")
                del row[column]
                seen.add("omitted columns")
        for column in ("hs", "big_hs"):  # the same JSON object; Debezium's keys in Java HashMap order
            mine, its = row.get(column), their_row.get(column)
            if isinstance(mine, str) and isinstance(its, str) and orjson.loads(mine) == orjson.loads(its):
                row[column] = its
        if row.get("nm") == "nm" and their_row.get("nm") is None:
            row["nm"] = None
            seen.add("name")
        right_days = ("infinity", "-infinity") if iso else (INT32_MAX, INT32_MIN)
        if row.get("d") in right_days and row["d"] != their_row.get("d"):
            row["d"] = their_row["d"]
            seen.add("infinite dates")
        dates = row.get("ad")
        if isinstance(dates, list) and dates != their_row.get("ad") and all(v in right_days for v in dates):
            row["ad"] = their_row["ad"]
            seen.add("infinite dates")
        if row.get("a2") == [1, 2, 3, 4] and their_row.get("a2") == [None, None]:
            row["a2"] = their_row["a2"]
            seen.add("2-D arrays")
        if row.get("big_ba") == "__debezium_unavailable_value" and their_row.get("big_ba") is None:
            row["big_ba"] = None
            seen.add("bytea placeholder")
        if iso:
            for column in ("ts", "ts3"):
                if row.get(column) in ("infinity", "-infinity") and their_row.get(column) != row[column]:
                    row[column] = their_row[column]
                    seen.add("infinite timestamps as text")
    return payload


def test_heartbeats_are_debeziums(compat_run: CompatRun) -> None:
    """--heartbeat-interval: records on __debezium-heartbeat.<prefix>, key {serverName}, value {ts_ms}."""
    run = compat_run
    if "heartbeat.interval.ms" not in run.options:
        pytest.skip("heartbeats are on in one option set")
    topic = f"__debezium-heartbeat.{run.prefix}"
    theirs = [r for r in run.debezium if r.topic == topic]
    ours = run.json.get(topic, [])
    assert theirs and ours
    assert (
        ours[0].key
        == theirs[0].key
        == {
            "schema": {
                "type": "struct",
                "fields": [{"type": "string", "optional": False, "field": "serverName"}],
                "optional": False,
                "name": "io.debezium.connector.common.ServerNameKey",
                "version": 1,
            },
            "payload": {"serverName": run.prefix},
        }
    )
    assert ours[0].value["schema"] == theirs[0].value["schema"]
    assert ours[0].value["payload"].keys() == theirs[0].value["payload"].keys() == {"ts_ms"}


def test_cdc_consume_and_avro_deserializer_read_debeziums_format(
    compat_run: CompatRun, broker: BrokerHandle
) -> None:
    """`cdc consume` prints the payload of a {schema, payload} record and decodes Debezium's Avro
    through the registry; confluent-kafka's AvroDeserializer reads that Avro too."""
    run = compat_run
    if run.name != "defaults":
        pytest.skip("one option set is enough")
    topic = f"{run.prefix}.public.alltypes"
    args = ["--bootstrap-servers", broker.bootstrap_servers, "--from-beginning", "--idle-timeout", "3"]
    lines, errors = consume([topic, *args])
    assert errors == []
    assert [line["value"] for line in lines] == [r.value and r.value["payload"] for r in run.json[topic]]
    avro_topic = f"{run.prefix}a.public.alltypes"
    lines, errors = consume([avro_topic, *args, "--schema-registry-url", run.registry_url])
    assert errors == []
    json_ops = [r.value and r.value["payload"]["op"] for r in run.json[topic]]
    assert [line["value"] and line["value"]["op"] for line in lines] == json_ops
    assert [line["key"] for line in lines] == [r.key and r.key["payload"] for r in run.json[topic]]
    with SchemaRegistryClient({"url": run.registry_url}) as client:
        deserialize = AvroDeserializer(client)
        ctx = SerializationContext(avro_topic, MessageField.VALUE)
        decoded = [None if v is None else deserialize(v, ctx) for _, v in run.avro[avro_topic]]
    assert [d and d["op"] for d in decoded] == json_ops
    first = decoded[0]
    assert first is not None
    assert first["after"]["n102"] == Decimal("12.50")  # Connect's Decimal as Avro's decimal
    assert first["after"]["d"] == 19782  # io.debezium.time.Date: days, no logical type
