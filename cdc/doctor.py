"""``cdc doctor``: check a server (and a broker) before the connector meets them, and say how to fix each.

Every check is read-only. Each gives ``pass``, ``warn`` (works, but watch it
or change it) or ``fail`` (`cdc start` would refuse, or data would suffer),
with the fix. Postgres: version, ``wal_level``, free replication slots and
WAL senders, the role, the tables, the publication, each captured table's
replica identity (keyless tables that get UPDATE/DELETE, TOASTable columns
without FULL identity), unconstrained ``numeric``, ``max_slot_wal_keep_size``,
the health of existing slots, ``idle_replication_slot_timeout`` (18),
failover slots (17) and ``--heartbeat-query``. Kafka (when a broker is
given): reachable with the configured security, topic creation allowed, the
schema topic compacted.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

import psycopg

from cdc import pg, replication, slots
from cdc.config import Settings
from cdc.errors import ConfigError, SourceError
from cdc.events import schemas_topic
from cdc.kafka import client_config
from cdc.kafka.admin import inspect_broker
from cdc.shaping import catalog as shaping
from cdc.shaping.select import Selection

Result = Literal["pass", "warn", "fail"]

#: An inactive slot older than this (PostgreSQL 17+ knows since when) is probably forgotten.
INACTIVE_WARN_SECONDS: Final = 24 * 3600
#: WAL an inactive slot holds back that deserves a look, when the server cannot say for how long.
RETAINED_WARN_BYTES: Final = 1024**3


@dataclass(slots=True)
class Check:
    check: str
    result: Result
    detail: str
    fix: str = ""


def run(settings: Settings, check_kafka: bool) -> list[Check]:
    """Every check, in the order a user would fix them."""
    checks: list[Check] = []
    checks += _postgres(settings)
    if check_kafka:
        checks += _kafka(settings)
    else:
        checks.append(Check("kafka", "pass", "not checked: give --bootstrap-servers to check the broker"))
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.result == "fail" for c in checks)


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": not failed(checks), "checks": [asdict(c) for c in checks]}


def render(checks: list[Check]) -> None:
    """A table on stdout (rich), then the verdict."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    colours = {"pass": "green", "warn": "yellow", "fail": "red"}
    table = Table(show_lines=False, expand=False)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    for c in checks:
        table.add_row(c.check, f"[{colours[c.result]}]{c.result}[/]", c.detail, c.fix, end_section=False)
    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=160)  # a file or a pipe: no need to squeeze
    console.print(table)
    counts = {r: sum(c.result == r for c in checks) for r in ("pass", "warn", "fail")}
    verdict = "not ready: fix the failures above" if counts["fail"] else "ready"
    console.print(f"{counts['pass']} passed, {counts['warn']} warnings, {counts['fail']} failed: {verdict}")


# -- Postgres ------------------------------------------------------------------------------


def _postgres(s: Settings) -> list[Check]:
    try:
        conn = pg.connect(s.dsn, f"cdc-{s.name}-doctor")
    except SourceError as exc:
        return [Check("postgres connection", "fail", str(exc), "fix --dsn, or start the server")]
    with conn:
        checks = [Check("postgres connection", "pass", pg.redact_dsn(s.dsn) or "libpq's PG* variables")]
        for step in (
            _version, _wal_level, _slots_free, _senders_free, _role, _tables_and_publication,
            _keep_size, _existing_slots, _idle_timeout, _failover, _heartbeat,
        ):  # fmt: skip
            try:
                checks += step(conn, s)
            except SourceError as exc:
                checks.append(Check(step.__name__.strip("_").replace("_", " "), "fail", str(exc)))
    return checks


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = pg.query_one(conn, query, params, doing="doctor")
    return row[0] if row else None


def _version(conn: psycopg.Connection[Any], s: Settings) -> list[Check]:
    version = conn.info.server_version
    text = str(_one(conn, "SHOW server_version"))
    if version < 100000:
        return [Check("server version", "fail", f"PostgreSQL {text}: pgoutput needs 10 or newer", "upgrade")]
    return [Check("server version", "pass", f"PostgreSQL {text}")]


def _wal_level(conn: psycopg.Connection[Any], s: Settings) -> list[Check]:
    level = _one(conn, "SHOW wal_level")
    if level == "logical":
        return [Check("wal_level", "pass", "logical")]
    return [
        Check(
            "wal_level",
            "fail",
            f"{level}: logical replication needs logical",
            "ALTER SYSTEM SET wal_level = logical; then restart postgres",
        )
    ]


def _slots_free(conn: psycopg.Connection[Any], s: Settings) -> list[Check]:
    row = pg.query_one(
        conn,
        "SELECT current_setting('max_replication_slots')::int, count(*), "
        "count(*) FILTER (WHERE slot_name = %s) FROM pg_replication_slots",
        (s.slot,),
    )
    assert row is not None
    limit, used, ours = int(row[0]), int(row[1]), int(row[2])
    name = "max_replication_slots"
    if ours:
        return [Check(name, "pass", f"{used} of {limit} used; slot {s.slot} exists and is reused")]
    fix = (
        "drop an unused slot (pg_drop_replication_slot), or raise max_replication_slots and restart postgres"
    )
    if used >= limit:
        return [Check(name, "fail", f"all {limit} slots are used: the connector cannot create {s.slot}", fix)]
    if used + 1 >= limit:
        return [Check(name, "warn", f"{used} of {limit} used: the connector takes the last one", fix)]
    return [Check(name, "pass", f"{used} of {limit} used")]


def _senders_free(conn: psycopg.Connection[Any], s: Settings) -> list[Check]:
    row = pg.query_one(
        conn,
        "SELECT current_setting('max_wal_senders')::int, "
        "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')",
    )
    assert row is not None
    limit, used = int(row[0]), int(row[1])
    fix = "raise max_wal_senders and restart postgres"
    if used >= limit:
        return [Check("max_wal_senders", "fail", f"all {limit} WAL senders are busy", fix)]
    if used + 1 >= limit:
        return [
            Check("max_wal_senders", "warn", f"{used} of {limit} busy: the connector takes the last", fix)
        ]
    return [Check("max_wal_senders", "pass", f"{used} of {limit} busy")]


def _role(conn: psycopg.Connection[Any], s: Settings) -> list[Check]:
    row = pg.query_one(
        conn,
        "SELECT rolname, rolreplication, rolsuper, rolcanlogin FROM pg_roles WHERE rolname = current_user",
    )
    assert row is not None
    name, replication_, superuser, login = row
    if superuser:
        return [Check("role", "pass", f"{name} is a superuser")]
    if not replication_:
        return [
            Check(
                "role",
                "fail",
                f"{name} lacks REPLICATION: it cannot create or read a slot",
                f"ALTER ROLE {name} REPLICATION",
            )
        ]
    if not login:
        return [Check("role", "fail", f"{name} lacks LOGIN", f"ALTER ROLE {name} LOGIN")]
    return [Check("role", "pass", f"{name} has REPLICATION")]


def _captured(conn: psycopg.Connection[Any], s: Settings) -> tuple[list[str], list[Check]]:
    """The tables the connector would capture, and what is wrong with the list or the publication."""
    if shaping.shaped(s):
        return _captured_shaped(conn, s)
    checks: list[Check] = []
    listed = [".".join(replication.split_table(t)) for t in s.tables]
    missing = replication.missing_tables(conn, listed)
    for table in missing:
        checks.append(Check(f"table {table}", "fail", "does not exist", "create it, or fix --tables"))
    wanted = [t for t in listed if t not in missing]
    existing = replication.publication_tables(conn, s.publication)
    name = f"publication {s.publication}"
    if existing is None:
        captured = wanted or _all_user_tables(conn)
        not_owned = [t for t in captured if not _owns(conn, t)]
        superuser = bool(_one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
        if not wanted and not superuser:
            checks.append(
                Check(
                    name,
                    "fail",
                    "does not exist; FOR ALL TABLES (no --tables) needs a superuser to create it",
                    f"list --tables, or CREATE PUBLICATION {s.publication} FOR ALL TABLES as a superuser",
                )
            )
        elif not_owned and not superuser:
            checks.append(
                Check(
                    name,
                    "fail",
                    f"does not exist, and the role cannot create it: it does not own "
                    f"{', '.join(not_owned[:5])}",
                    f"CREATE PUBLICATION {s.publication} FOR TABLE ... as their owner",
                )
            )
        else:
            target = ", ".join(wanted) if wanted else "all tables"
            checks.append(Check(name, "pass", f"does not exist: the connector creates it for {target}"))
        return captured, checks
    all_tables, covered = existing
    captured = wanted or sorted(covered)
    uncovered = [t for t in wanted if t not in covered]
    flags = pg.query_one(
        conn,
        "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = %s",
        (s.publication,),
    )
    skipped = [
        op for op, on in zip(("insert", "update", "delete", "truncate"), flags or (), strict=False) if not on
    ]
    if uncovered and not all_tables:
        if _one(conn, "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s",
                (s.publication,)) == replication.MANAGED_PUBLICATION:  # fmt: skip
            checks.append(Check(name, "pass", f"the connector adds {', '.join(uncovered)} to it"))
        else:
            checks.append(
                Check(
                    name,
                    "fail",
                    f"does not publish {', '.join(uncovered)}",
                    f"ALTER PUBLICATION {s.publication} ADD TABLE {', '.join(uncovered)}",
                )
            )
    elif not captured:
        checks.append(Check(name, "warn", "publishes no table: nothing would be captured", "list --tables"))
    else:
        what = "all tables" if all_tables else f"{len(covered)} tables"
        checks.append(Check(name, "pass", f"publishes {what}"))
    if skipped:
        checks.append(
            Check(
                name,
                "warn",
                f"does not publish {', '.join(skipped)}: those changes never reach Kafka",
                f"ALTER PUBLICATION {s.publication} SET (publish = 'insert, update, delete, truncate')",
            )
        )
    return captured, checks


def _captured_shaped(conn: psycopg.Connection[Any], s: Settings) -> tuple[list[str], list[Check]]:
    """With patterns, column lists or row filters: the set they give, and the publication as the
    connector would make it (made in a transaction that is rolled back: the server and cdc check
    the column lists and row filters, and nothing stays)."""
    selection = Selection.from_settings(s)
    missing = replication.missing_tables(conn, selection.names)
    checks = [Check(f"table {t}", "fail", "does not exist", "create it, or fix --tables") for t in missing]
    name = f"publication {s.publication}"
    try:
        capture = shaping.plan(conn, s, [t for t in selection.names if t not in missing])
        replication.check_publication(conn, s.publication, capture.tables, capture.published)
    except (ConfigError, SourceError) as exc:
        return [], [*checks, Check(name, "fail", str(exc))]
    if not capture.tables:
        checks.append(Check(name, "warn", f"no table matches {selection.describe()} yet", "fix --tables"))
    elif capture.published is None:
        checks.append(Check(name, "pass", f"made by someone else; {len(capture.tables)} of its tables match"))
    else:
        shaped = [t.name for t in capture.published if t.columns is not None or t.row_filter is not None]
        extra = f", column lists or row filters on {', '.join(shaped)}" if shaped else ""
        checks.append(
            Check(name, "pass", f"the connector keeps it to {len(capture.tables)} matching tables{extra}")
        )
    return capture.tables, checks


def _all_user_tables(conn: psycopg.Connection[Any]) -> list[str]:
    rows = pg.query(
        conn,
        """SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
              AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
            ORDER BY 1""",
    )
    return [str(r[0]) for r in rows]


def _owns(conn: psycopg.Connection[Any], table: str) -> bool:
    return bool(
        _one(
            conn,
            "SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = to_regclass(%s)",
            (replication.quote_table(table),),
        )
    )


def _tables_and_publication(conn: psycopg.Connection[Any], s: Settings) -> list[Check]:
    captured, checks = _captured(conn, s)
    keyed = 0
    for table in captured:
        problems = _table(conn, table, s)
        checks += problems
        keyed += not problems
    if captured:
        more = "" if keyed == len(captured) else f"; {len(captured) - keyed} have warnings above"
        checks.append(Check("tables", "pass", f"{len(captured)} captured, {keyed} need nothing{more}"))
    return checks


def _table(conn: psycopg.Connection[Any], table: str, s: Settings) -> list[Check]:
    """Replica identity, TOASTable columns and unconstrained numerics of one captured table."""
    row = pg.query_one(
        conn,
        """SELECT c.oid, c.relreplident,
                  EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                  coalesce(st.n_tup_upd + st.n_tup_del, 0)
             FROM pg_class c LEFT JOIN pg_stat_user_tables st ON st.relid = c.oid
            WHERE c.oid = to_regclass(%s)""",
        (replication.quote_table(table),),
    )
    if row is None:
        return []
    oid, identity, has_pk, changed = row
    identity = identity if isinstance(identity, str) else bytes(identity).decode()
    checks: list[Check] = []
    name = f"replica identity {table}"
    keyless = identity == "n" or (identity == "d" and not has_pk)
    if keyless and changed:
        checks.append(
            Check(
                name,
                "warn",
                f"no primary key and {changed} UPDATE/DELETE so far: once published, UPDATE and DELETE on it "
                "fail (no replica identity), and its events have no Kafka key",
                f"add a primary key, or ALTER TABLE {table} REPLICA IDENTITY FULL",
            )
        )
    elif keyless:
        checks.append(
            Check(
                name,
                "warn",
                "no primary key: events have no Kafka key, and UPDATE/DELETE would fail once published",
                f"add a primary key, or ALTER TABLE {table} REPLICA IDENTITY FULL if it gets updates",
            )
        )
    columns = pg.query(
        conn,
        """SELECT a.attname, a.attstorage IN ('x', 'e') AND t.typlen = -1,
                  a.atttypid = 'numeric'::regtype AND a.atttypmod = -1
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
            WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
        (oid,),
    )
    toastable = [str(c[0]) for c in columns if c[1]]
    numerics = [str(c[0]) for c in columns if c[2]]
    if toastable and identity != "f" and not keyless:
        checks.append(
            Check(
                f"toast {table}",
                "warn",
                f"{', '.join(toastable)} can be TOASTed: an update that leaves such a value unchanged sends "
                f"{s.unavailable_placeholder} instead of it",
                f"ALTER TABLE {table} REPLICA IDENTITY FULL if consumers need the value in every update",
            )
        )
    if numerics:
        checks.append(
            Check(
                f"numeric {table}",
                "warn",
                f"{', '.join(numerics)}: numeric without precision and scale is streamed as a string, "
                "not an Avro decimal",
                f"ALTER TABLE {table} ALTER COLUMN ... TYPE numeric(p, s) where the values allow it",
            )
        )
    return checks


def _keep_size(conn: psycopg.Connection[Any], s: Settings) -> list[Check]:
    if conn.info.server_version < 130000:
        return [
            Check(
                "max_slot_wal_keep_size",
                "warn",
                "PostgreSQL 12 has no limit: a stopped connector's slot keeps WAL until the disk is full",
                "watch pg_replication_slots, and drop slots nobody reads",
            )
        ]
    value = str(_one(conn, "SHOW max_slot_wal_keep_size"))
    if value == "-1":
        return [
            Check(
                "max_slot_wal_keep_size",
                "warn",
                "unlimited: a connector that stops for long keeps WAL until the disk is full",
                "ALTER SYSTEM SET max_slot_wal_keep_size = '50GB' (what the disk allows), and alert on "
                "cdc_slot_wal_status; --on-slot-lost decides what happens when it is exceeded",
            )
        ]
    return [
        Check(
            "max_slot_wal_keep_size",
            "pass",
            f"{value}: a slot further behind is invalidated (--on-slot-lost {s.on_slot_lost})",
        )
    ]


def _existing_slots(conn: psycopg.Connection[Any], s: Settings) -> list[Check]:
    checks: list[Check] = []
    found = slots.slot_health(conn)
    now = time.time()
    for slot in found:
        ours = slot.name == s.slot
        label = f"slot {slot.name}" + (" (this connector's)" if ours else "")
        retained = (
            f"{slot.retained_bytes / 1024**2:,.0f} MB of WAL" if slot.retained_bytes is not None else ""
        )
        if slot.lost:
            fix = "cdc start --on-slot-lost recreate, or cdc drop"
            if not ours:
                fix = f"SELECT pg_drop_replication_slot('{slot.name}')"
            checks.append(
                Check(
                    label,
                    "fail" if ours else "warn",
                    f"lost (wal_status {slot.wal_status or '-'}, "
                    f"{slot.invalidation_reason or 'invalidated'}): it can never stream again",
                    fix,
                )
            )
            continue
        if slot.wal_status == "unreserved":
            checks.append(
                Check(
                    label,
                    "warn",
                    f"wal_status unreserved: {retained} held, about to be lost "
                    f"(safe_wal_size {slot.safe_wal_size})",
                    "let its reader catch up now, or drop it",
                )
            )
            continue
        if not slot.active:
            idle = now - slot.inactive_since if slot.inactive_since else None
            old = idle is not None and idle > INACTIVE_WARN_SECONDS
            big = slot.retained_bytes is not None and slot.retained_bytes > RETAINED_WARN_BYTES
            if old or (idle is None and big):
                since = f" for {idle / 3600:,.0f} h" if idle is not None else ""
                checks.append(
                    Check(
                        label,
                        "warn",
                        f"inactive{since}, holding {retained}",
                        "start its connector, or drop it (cdc drop, pg_drop_replication_slot)",
                    )
                )
                continue
        state = "active" if slot.active else "inactive"
        safe = f", safe_wal_size {slot.safe_wal_size:,}" if slot.safe_wal_size is not None else ""
        wal = f", wal_status {slot.wal_status}" if slot.wal_status else ""
        checks.append(Check(label, "pass", f"{state}, holding {retained}{wal}{safe}"))
    if not found:
        checks.append(Check("replication slots", "pass", "none yet"))
    return checks


def _idle_timeout(conn: psycopg.Connection[Any], s: Settings) -> list[Check]:
    if conn.info.server_version < 180000:
        return []
    value = str(_one(conn, "SELECT current_setting('idle_replication_slot_timeout', true)") or "0")
    if value in ("0", "0s", "0min"):
        return [Check("idle_replication_slot_timeout", "pass", "off")]
    return [
        Check(
            "idle_replication_slot_timeout",
            "warn",
            f"{value}: a connector stopped for longer loses its slot",
            f"keep stops shorter than {value}; --on-slot-lost recreate re-reads the tables after one",
        )
    ]


def _failover(conn: psycopg.Connection[Any], s: Settings) -> list[Check]:
    if not s.failover_slot:
        return []
    if conn.info.server_version < 170000:
        return [
            Check(
                "failover slot",
                "fail",
                "--failover-slot needs PostgreSQL 17 or newer",
                "drop --failover-slot, or upgrade the server",
            )
        ]
    standby_slots = str(_one(conn, "SELECT current_setting('synchronized_standby_slots', true)") or "")
    if not standby_slots:
        return [
            Check(
                "failover slot",
                "warn",
                "synchronized_standby_slots is empty: the slot can get ahead of the standby that should take "
                "it over",
                "ALTER SYSTEM SET synchronized_standby_slots = '<standby's physical slot>'; on the standby: "
                "sync_replication_slots = on, hot_standby_feedback = on",
            )
        ]
    return [Check("failover slot", "pass", f"synchronized_standby_slots = {standby_slots}")]


def _heartbeat(conn: psycopg.Connection[Any], s: Settings) -> list[Check]:
    if not s.heartbeat_query:
        return []
    slots.check_heartbeat_query(conn, s)
    return [Check("heartbeat query", "pass", "runs (tried in a transaction rolled back)")]


# -- Kafka ------------------------------------------------------------------------------------


def _kafka(s: Settings) -> list[Check]:
    topic = schemas_topic(s.topic_prefix)
    try:
        client = client_config(s)  # --kafka-config, --kafka-config-file: as the connector would use them
    except ConfigError as exc:
        return [Check("broker", "fail", f"kafka client settings: {exc}", "fix --kafka-config")]
    report = inspect_broker(s.producer, client, s.producer_configs, topic)
    if report.reachable_error:
        return [
            Check(
                "broker",
                "fail",
                f"{s.bootstrap_servers}: {report.reachable_error}",
                "fix --bootstrap-servers, or the security settings (--kafka-config)",
            )
        ]
    checks = [Check("broker", "pass", f"{s.bootstrap_servers}: {report.brokers} broker(s)")]
    if report.create_error:
        checks.append(
            Check(
                "topic creation",
                "fail",
                f"the broker refuses to create topics: {report.create_error}",
                f"grant CREATE on the cluster or on topics {s.topic_prefix}.*, or create them beforehand",
            )
        )
    else:
        checks.append(Check("topic creation", "pass", "allowed (asked with validate_only)"))
    if not report.schema_topic_exists:
        checks.append(Check(f"topic {topic}", "pass", "does not exist: the connector creates it compacted"))
    elif report.schema_topic_error or report.schema_topic_policy is None:
        checks.append(
            Check(
                f"topic {topic}",
                "warn",
                f"cleanup.policy unreadable: {report.schema_topic_error or 'not reported'}",
                f"make sure {topic} has cleanup.policy=compact",
            )
        )
    elif "compact" not in report.schema_topic_policy:
        checks.append(
            Check(
                f"topic {topic}",
                "fail",
                f"cleanup.policy={report.schema_topic_policy}: retention will delete schemas that old "
                "records still need",
                f"kafka-configs --alter --entity-type topics --entity-name {topic} "
                "--add-config cleanup.policy=compact",
            )
        )
    else:
        checks.append(Check(f"topic {topic}", "pass", f"cleanup.policy={report.schema_topic_policy}"))
    return checks
