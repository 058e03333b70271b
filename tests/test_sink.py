"""`cdc sink postgres` and `cdc.sink.Sink` on real servers: the target's tables equal the source's."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import psycopg

from cdc.sink import Change, SinkSettings
from tests.fix_servers import BrokerHandle, TestDb, new_db
from tests.pipeline import settings_for
from tests.sinking import SinkProcess, rows, sinking, wait_same
from tests.support import cdc, running, wait_until

TYPES = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TABLE public.every (
    id bigint PRIMARY KEY, i2 smallint, i4 int, n numeric(10,2), nn numeric, f4 real, f8 double precision,
    b boolean, t text, vc varchar(10), c char(5), by bytea, d date, tm time, tz timetz, ts timestamp,
    tstz timestamptz, iv interval, u uuid, j json, jb jsonb, ia int[], ta text[], da date[], ba bytea[],
    m mood, p posint, ip inet, pt point, ia2 int[][]
);
"""

ROWS = """
INSERT INTO public.every VALUES
 (1, 1, 2, 12.50, 3.14159265358979, 1.5, 2.25, true, 'tëxt', 'short', 'ab', '\\x00ff10', '2026-11-25',
  '10:11:12.5', '10:11:12+05:30', '2026-11-25 10:11:12.123456', '2026-11-25 10:11:12.5+01',
  '1 year 2 mons -3 days 04:05:06.7', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}',
  '{"b": {"c": null}}', '{1,NULL,3}', '{"quo\\"te","com,ma",NULL,"back\\\\slash"," sp "}',
  '{2026-01-01,infinity}', '{"\\\\x0102",NULL}', 'happy', 7, '10.1.2.3/8', '(1.5,2)', '{{1,2},{3,4}}'),
 (2, NULL, NULL, 'NaN', 'Infinity', 'NaN', '-Infinity', false, '', NULL, NULL, '', 'infinity', '24:00:00',
  NULL, '-infinity', 'infinity', 'P0D', NULL, 'null', '[]', '{}', '{}', NULL, NULL, 'sad', NULL, '::1',
  NULL, NULL),
 (3, -32768, 2147483647, -0.01, 0, 3.4e38, 1e-300, NULL, repeat('x', 5000), NULL, 'abcde', NULL,
  '0044-03-15 BC', '00:00:00', '23:59:59.999999-12', '0001-01-01 00:00:00 BC',
  '1999-12-31 23:59:59.999999+00', '-1 days', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL);
"""


def _every_type(db: TestDb, bootstrap: str, prefix: str, state_dir: Path, format: str) -> None:
    db.execute(TYPES)
    db.execute(ROWS)
    target = new_db(db.server)
    table_map: dict[str, str] = {}
    if format == "json":  # JSON records carry no types: the target table is made beforehand, elsewhere
        target.execute(
            "CREATE SCHEMA replica; SET search_path = replica;" + TYPES.replace("public.", "replica.")
        )
        table_map = {"public.every": "replica.every"}
    settings = settings_for(
        db, bootstrap, prefix, state_dir, format=format, snapshot="initial", tables=["public.every"]
    )
    sink = SinkSettings(
        dsn=target.dsn, bootstrap_servers=bootstrap, topics=[f"{prefix}.public.every"], table_map=table_map
    )
    names = {"public.every": table_map.get("public.every", "public.every")}
    try:
        with running(settings), sinking(sink) as thread:
            wait_same(db.dsn, target.dsn, ["public.every"], thread, names=names)
            db.execute("UPDATE public.every SET i4 = i4 + 1, t = t || '!' WHERE id = 1")
            db.execute("UPDATE public.every SET i2 = 5 WHERE id = 3")  # t stays TOASTed: not sent
            db.execute("UPDATE public.every SET id = 30 WHERE id = 3")  # a key change, t still not sent
            db.execute("DELETE FROM public.every WHERE id = 2")
            db.execute("INSERT INTO public.every (id, t) VALUES (4, 'four')")
            wait_same(db.dsn, target.dsn, ["public.every"], thread, names=names)
            assert len(rows(target.dsn, names["public.every"])) == 3
            db.execute("TRUNCATE public.every")
            db.execute("INSERT INTO public.every (id, t) VALUES (5, 'after truncate')")
            wait_same(db.dsn, target.dsn, ["public.every"], thread, names=names)
    finally:
        target.drop()


def test_every_type_and_every_op(db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path) -> None:
    """Avro, on every server version: the sink creates the table from the writer schema's types."""
    _every_type(db, broker.bootstrap_servers, prefix, state_dir, "avro")


def test_every_type_from_json_into_a_mapped_table(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """--format json: into a table made beforehand (the records carry no types), under another name."""
    _every_type(db_latest, broker.bootstrap_servers, prefix, state_dir, "json")


GROUP_TABLES = [f"public.g{i}" for i in range(4)]


def _write(db: TestDb, start: int, count: int) -> None:
    for n in range(start, start + count):
        db.execute(
            "; ".join(
                f"INSERT INTO {t} VALUES ({n}, 'row {n}') ON CONFLICT (id) DO UPDATE SET v = 'again {n}'"
                for t in GROUP_TABLES
            )
        )
        if n % 3 == 0:
            db.execute(f"DELETE FROM {GROUP_TABLES[n % 4]} WHERE id = {n - 1}")


def test_two_sinks_share_a_group(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, tmp_path: Path
) -> None:
    """Two `cdc sink postgres --group` processes split the partitions; when one dies, the other takes
    its partitions over from the stored positions, and the target still equals the source."""
    db = db_latest
    target = new_db(db.server)
    for table in GROUP_TABLES:
        db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    settings = settings_for(
        db,
        broker.bootstrap_servers,
        prefix,
        state_dir,
        format="avro",
        tables=GROUP_TABLES,
        topic_partitions=2,
    )
    topics = [f"{prefix}.{t}" for t in GROUP_TABLES]
    group = ["--group", "shipping", "--consumer-config", "max_poll_interval_ms=6000", "--consumer-config",
             "session_timeout_ms=6000", "--consumer-config", "heartbeat_interval_ms=500"]  # fmt: skip
    # 6 s: Apache Kafka's group.min.session.timeout.ms refuses less (InvalidSessionTimeoutError)
    sinks = [
        SinkProcess(target.dsn, broker.bootstrap_servers, topics, tmp_path / f"sink{i}", group)
        for i in (1, 2)
    ]
    try:
        with running(settings):
            _write(db, 1, 30)
            for sink in sinks:
                sink.start()
            wait_same(db.dsn, target.dsn, GROUP_TABLES, check=lambda: _alive(sinks))

            def shared() -> bool:
                held = [_partitions_held(s.log_text()) for s in sinks]
                return all(held) and sum(held) == 2 * len(GROUP_TABLES)

            wait_until(shared, 60, "the two sinks to share the 8 partitions")
            _write(db, 31, 30)
            wait_same(db.dsn, target.dsn, GROUP_TABLES, check=sinks[0].check_alive)
            sinks[1].kill9()  # the other one takes its partitions over
            _write(db, 61, 30)
            wait_same(db.dsn, target.dsn, GROUP_TABLES, timeout=90, check=sinks[0].check_alive)
        assert sinks[0].stop() == 0
        stored = target.execute('SELECT count(*), count(DISTINCT "group") FROM cdc_sink_positions')
        assert stored == [(2 * len(GROUP_TABLES), 1)]
    finally:
        for sink in sinks:
            sink.cleanup()
        target.drop()


def _alive(sinks: list[SinkProcess]) -> None:
    for sink in sinks:
        sink.check_alive()


def _partitions_held(log: str) -> int:
    """How many partitions a sink's log says it reads now (its last assignment)."""
    found = re.findall(r"reading (\d+) partitions", log)
    return int(found[-1]) if found else 0


UNTIL_TABLES = ["public.accounts", "public.moves"]


def _history(db: TestDb, start: int) -> None:
    """Changes to replay: inserts, updates, a key change, deletes, a transaction over both tables."""
    for n in range(start, start + 20):
        db.execute(
            f"BEGIN; UPDATE public.accounts SET balance = balance - {n} WHERE id = {n % 5};"
            f"INSERT INTO public.moves VALUES ({n}, {n % 5}, -{n}); COMMIT"
        )
    db.execute(f"UPDATE public.accounts SET id = {start + 100} WHERE id = {start % 5}")
    db.execute(f"INSERT INTO public.accounts VALUES ({start % 5}, 'new {start}', 0)")
    db.execute(f"DELETE FROM public.moves WHERE id % 7 = {start % 7}")


def test_until_rebuilds_the_tables_as_of_then(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """`--until` applies everything before a point and stops: the target holds the source as it was
    then. The point as an LSN (whole transactions, with the transaction metadata) and as a time."""
    db = db_latest
    db.execute("CREATE TABLE public.accounts (id int PRIMARY KEY, owner text, balance numeric(12,2))")
    db.execute("CREATE TABLE public.moves (id int PRIMARY KEY, account int, amount numeric(12,2))")
    db.execute("INSERT INTO public.accounts SELECT g, 'owner ' || g, 1000 FROM generate_series(0, 4) g")
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, format="avro", snapshot="initial",
        tables=UNTIL_TABLES, transaction_metadata=True,
    )  # fmt: skip
    with running(settings):
        _history(db, 1)
        time.sleep(0.05)  # commit times are in milliseconds: keep the point clear of them
        lsn, moment = db.execute("SELECT pg_current_wal_lsn()::text, clock_timestamp()")[0]
        then = {t: rows(db.dsn, t) for t in UNTIL_TABLES}
        time.sleep(0.05)
        _history(db, 50)
        db.execute("TRUNCATE public.moves")
        db.execute("INSERT INTO public.moves VALUES (1000, 1, 1)")
        assert then != {t: rows(db.dsn, t) for t in UNTIL_TABLES}
        for until, extra in ((lsn, ["--transaction-metadata"]), (moment.isoformat(), [])):
            target = new_db(db.server)
            try:
                done = cdc(
                    "sink", "postgres", "--bootstrap-servers", broker.bootstrap_servers, "--until", until,
                    "--topics", ",".join(f"{prefix}.{t}" for t in UNTIL_TABLES), *extra,
                    env={"CDC_SINK_DSN": target.dsn}, timeout=120,
                )  # fmt: skip
                assert done.returncode == 0, done.stderr[-3000:]
                assert f"applied every change before --until {until}" in done.stdout
                assert {t: rows(target.dsn, t) for t in UNTIL_TABLES} == then, until
            finally:
                target.drop()


def test_a_service_applies_its_events_with_its_own_handler(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """The library: `cdc.sink.Sink` with a handler of the service's own, in its own database: each
    change handed over once, with the positions in the same transaction, across a restart."""
    db = db_latest
    db.execute(
        "CREATE TABLE public.order_lines (order_id int, sku text, qty int, PRIMARY KEY (order_id, sku))"
    )
    db.execute("ALTER TABLE public.order_lines REPLICA IDENTITY FULL")  # updates carry the old quantity
    service = new_db(db.server)
    service.execute("CREATE TABLE reserved (sku text PRIMARY KEY, qty int NOT NULL)")
    service.execute(
        "CREATE TABLE handled (commit_lsn bigint, total_order int, PRIMARY KEY (commit_lsn, total_order))"
    )
    seen: list[Change] = []

    def reserve(conn: psycopg.Connection[Any], change: Change) -> None:
        seen.append(change)
        conn.execute("INSERT INTO handled VALUES (%s, %s)", change.position)  # a repeat would fail here
        if change.op == "m":
            assert change.message_prefix == "outbox" and change.message_content == b'{"n": 1}'
            return
        line = change.after or {}
        before = change.before or {}
        qty = int(line.get("qty") or 0) - (int(before.get("qty") or 0) if change.op != "c" else 0)
        sku = line.get("sku") or before.get("sku")
        conn.execute(
            "INSERT INTO reserved VALUES (%s, %s) ON CONFLICT (sku) DO UPDATE SET qty = reserved.qty + %s",
            (sku, qty, qty),
        )

    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, format="avro", tables=["public.order_lines"]
    )
    sink = SinkSettings(
        dsn=service.dsn,
        bootstrap_servers=broker.bootstrap_servers,
        topics=[f"{prefix}.public.order_lines", f"{prefix}.messages"],
    )
    try:
        with running(settings):
            db.execute(
                "BEGIN; INSERT INTO order_lines VALUES (1, 'KB', 2), (1, 'MS', 1);"
                "SELECT pg_logical_emit_message(true, 'outbox', '{\"n\": 1}'); COMMIT"
            )
            with sinking(sink, reserve) as thread:
                wait_until(lambda: thread.check() or service.scalar("SELECT sum(qty) FROM reserved") == 3, 30)
            db.execute("UPDATE order_lines SET qty = 5 WHERE sku = 'KB'")  # while no sink runs
            db.execute("DELETE FROM order_lines WHERE sku = 'MS'")
            with sinking(sink, reserve) as thread:
                wait_until(lambda: thread.check() or service.scalar("SELECT count(*) FROM handled") == 5, 30)
        assert service.execute("SELECT sku, qty FROM reserved ORDER BY sku") == [("KB", 5), ("MS", 0)]
        assert [c.op for c in seen] == ["c", "c", "m", "u", "d"]
        assert all(c.table == "public.order_lines" for c in seen if c.op != "m")
    finally:
        service.drop()


def test_a_transaction_over_a_topic_made_meanwhile_is_applied_whole(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """--transaction-metadata: a source transaction touching a table whose topic its own first change
    makes, while the sink runs, is still one target transaction. Its END can arrive before the sink
    holds the new topic; counted without it, the transaction was applied in two parts (the sink
    chaos test saw 30 such splits)."""
    db = db_latest
    new = ["shipments", "invoices", "returns"]
    db.execute("; ".join(f"CREATE TABLE public.{t} (id int PRIMARY KEY)" for t in ["orders", *new]))
    service = new_db(db.server)
    service.execute("CREATE TABLE applied (tab text, id int, xid bigint)")

    def record(conn: psycopg.Connection[Any], change: Change) -> None:
        row = change.after or {}
        conn.execute("INSERT INTO applied VALUES (%s, %s, txid_current())", (change.table, row.get("id")))

    tables = [f"public.{t}" for t in ["orders", *new]]
    settings = settings_for(
        db,
        broker.bootstrap_servers,
        prefix,
        state_dir,
        format="avro",
        tables=tables,
        transaction_metadata=True,
    )
    sink = SinkSettings(
        dsn=service.dsn,
        bootstrap_servers=broker.bootstrap_servers,
        topics=[f"{prefix}.{t}" for t in tables],
        transaction_metadata=True,
    )
    try:
        with running(settings):
            db.execute("INSERT INTO orders VALUES (0)")  # the orders and transaction topics exist
            with sinking(sink, record) as thread:
                wait_until(lambda: thread.check() or service.scalar("SELECT count(*) FROM applied") == 1, 30)
                for i, table in enumerate(new, 1):  # each table's first change makes its topic
                    db.execute(
                        f"BEGIN; INSERT INTO orders VALUES ({i}); INSERT INTO {table} VALUES ({i}); COMMIT"
                    )
                    wait_until(
                        lambda n=1 + 2 * i: (
                            thread.check() or service.scalar("SELECT count(*) FROM applied") == n
                        ),  # type: ignore[misc]
                        30,
                    )
        split = service.execute(
            "SELECT id, count(DISTINCT xid) FROM applied WHERE id > 0 GROUP BY id"
            " HAVING count(DISTINCT xid) > 1"
        )
        assert split == [], f"source transactions (by id) applied over several target transactions: {split}"
        assert service.scalar("SELECT count(*) FROM applied") == 1 + 2 * len(new)
    finally:
        service.drop()
