"""The Postgres side: preconditions, publication, slot, and the replication stream.

The stream runs on psycopg's libpq layer (`psycopg.pq.PGconn`) with
``replication=database``, because psycopg's connection classes do not speak
COPY BOTH. Catalog work (preconditions, publications, slot lookups) runs on a
normal psycopg connection. Every server refusal becomes a `SourceError` whose
message says what to change; a lost connection becomes `SourceUnavailable`.
"""

from __future__ import annotations

import logging
import re
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg import pq, sql

from cdc import pg
from cdc.errors import SlotLost, SourceError, SourceUnavailable
from cdc.lsn import PG_EPOCH_US, format_lsn, parse_lsn
from cdc.pgoutput import encode_standby_status

log = logging.getLogger(__name__)

#: The newest pgoutput protocol version this connector decodes.
MAX_PROTOCOL_VERSION = 4


def protocol_version_for(server_version: int) -> int:
    """Highest pgoutput protocol version a server (``server_version_num``) speaks."""
    if server_version >= 160000:
        return 4
    if server_version >= 150000:
        return 3
    if server_version >= 140000:
        return 2
    return 1


# -- preconditions, publication, slot -------------------------------------------------


@dataclass(slots=True, frozen=True)
class SlotInfo:
    name: str
    plugin: str | None
    slot_type: str
    database: str | None
    active: bool
    active_pid: int | None
    confirmed_flush_lsn: int | None
    restart_lsn: int | None


def check_wal_level(conn: psycopg.Connection[Any]) -> None:
    row = pg.query_one(conn, "SHOW wal_level")
    level = row[0] if row else "?"
    if level != "logical":
        raise SourceError(
            f"wal_level is {level!r}, logical replication needs 'logical': "
            "ALTER SYSTEM SET wal_level = logical, then restart postgres"
        )


def check_role(conn: psycopg.Connection[Any]) -> None:
    row = pg.query_one(
        conn,
        "SELECT rolname, rolreplication, rolcanlogin, rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    if row is None:
        raise SourceError("cannot read the current role from pg_roles")
    name, replication, login, superuser = row
    if not login:
        raise SourceError(f"role {name!r} lacks LOGIN: ALTER ROLE {name} LOGIN")
    if not (replication or superuser):
        raise SourceError(f"role {name!r} lacks REPLICATION: ALTER ROLE {name} REPLICATION")


def missing_tables(conn: psycopg.Connection[Any], tables: list[str]) -> list[str]:
    """The tables of ``tables`` that do not exist."""
    missing = []
    for table in tables:
        row = pg.query_one(conn, "SELECT to_regclass(%s)", (quote_table(table),))
        if row is None or row[0] is None:
            missing.append(table)
    return missing


def check_tables(conn: psycopg.Connection[Any], tables: list[str]) -> None:
    missing = missing_tables(conn, tables)
    if missing:
        raise SourceError(f"table {missing[0]} does not exist: create it or fix --tables")


def quote_table(table: str) -> str:
    """``schema.table`` (or ``table``, in public) -> a quoted, qualified name."""
    schema, table_name = split_table(table)
    return sql.Identifier(schema, table_name).as_string(None)


def split_table(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return schema or "public", name


def find_slot(conn: psycopg.Connection[Any], slot: str) -> SlotInfo | None:
    row = pg.query_one(
        conn,
        """SELECT slot_name, plugin, slot_type, database, active, active_pid,
                  confirmed_flush_lsn::text, restart_lsn::text
             FROM pg_replication_slots WHERE slot_name = %s""",
        (slot,),
    )
    if row is None:
        return None
    return SlotInfo(
        row[0],
        row[1],
        row[2],
        row[3],
        bool(row[4]),
        row[5],
        parse_lsn(row[6]) if row[6] else None,
        parse_lsn(row[7]) if row[7] else None,
    )


#: how long a start waits for a slot another walsender still holds (see `await_release`)
SLOT_RELEASE_WAIT = 5.0


def await_release(
    conn: psycopg.Connection[Any], slot: SlotInfo | None, timeout: float = SLOT_RELEASE_WAIT
) -> SlotInfo | None:
    """``slot`` once no walsender holds it, or as it is after ``timeout`` seconds (None: there is
    none, or it was dropped meanwhile).

    A connector that has just stopped closes its replication connection, but its walsender lets
    go of the slot only when it exits, a moment later: a start right after a stop (a restart) would
    find the slot active. A slot held longer than that belongs to a running connector, which
    `validate_slot` then refuses."""
    if slot is None or not slot.active:
        return slot
    log.info(
        "slot %s is held by process %s; waiting up to %g s for it to be released",
        slot.name, slot.active_pid, timeout,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        found = find_slot(conn, slot.name)
        if found is None or not found.active:
            return found
        slot = found
    return slot


def validate_slot(conn: psycopg.Connection[Any], slot: SlotInfo) -> None:
    database = current_database(conn)
    if slot.slot_type != "logical" or slot.plugin != "pgoutput":
        raise SourceError(
            f"slot {slot.name!r} uses plugin {slot.plugin or slot.slot_type!r}, not pgoutput: "
            "drop it (SELECT pg_drop_replication_slot(...)) or choose another --slot"
        )
    if slot.database != database:
        raise SourceError(
            f"slot {slot.name!r} belongs to database {slot.database!r}, not {database!r}: "
            "choose another --slot or connect to that database"
        )
    if slot.active:
        raise SourceError(
            f"slot {slot.name!r} is active in process {slot.active_pid}: another connector "
            "reads it; stop that one or choose another --slot"
        )


def check_slot_capacity(conn: psycopg.Connection[Any]) -> None:
    row = pg.query_one(
        conn,
        "SELECT current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots)",
    )
    if row and row[1] >= row[0]:
        raise SourceError(
            f"max_replication_slots ({row[0]}) exhausted: drop an unused slot or raise "
            "max_replication_slots and restart postgres"
        )


def publication_tables(conn: psycopg.Connection[Any], publication: str) -> tuple[bool, set[str]] | None:
    """(all tables?, {schema.table}) of ``publication``, or None if it does not exist."""
    row = pg.query_one(conn, "SELECT puballtables FROM pg_publication WHERE pubname = %s", (publication,))
    if row is None:
        return None
    rows = pg.query(
        conn, "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)
    )
    return bool(row[0]), {f"{s}.{t}" for s, t in rows}


#: The comment on the publications cdc creates: only those it extends when --tables grows.
MANAGED_PUBLICATION = "created by cdc; tables are added to it when --tables grows"


@dataclass(slots=True, frozen=True)
class PublishedTable:
    """A table as a publication lists it: with a column list and a row filter (PostgreSQL 15+)."""

    name: str  # schema.table
    columns: tuple[str, ...] | None = None  # publish only these (None: every column)
    row_filter: str | None = None  # publish only the rows meeting this condition


def check_publication(
    conn: psycopg.Connection[Any],
    publication: str,
    tables: list[str],
    published: list[PublishedTable] | None = None,
) -> None:
    """Refuse now, before anything is created, what `ensure_publication` could not do.

    One created by someone else must already publish ``tables``; a new one needs
    the role to own the listed tables (or all tables: superuser). With ``published``
    (cdc keeps the list), the publication is made as it will be and rolled back:
    the server checks the column lists and row filters, and `ensure_publication`'s
    checks of the replica identity run.
    """
    if published is not None:
        _list_tables(conn, publication, published, commit=False)
        return
    existing = publication_tables(conn, publication)
    wanted = {".".join(split_table(t)) for t in tables}
    if existing is not None:
        all_tables, covered = existing
        missing = sorted(wanted - covered)
        if missing and not all_tables and not _managed(conn, publication):
            raise SourceError(
                f"publication {publication!r} does not publish {', '.join(missing)}: "
                f"ALTER PUBLICATION {publication} ADD TABLE {', '.join(missing)}"
            )
        return
    row = pg.query_one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    if row is not None and row[0]:
        return
    if not tables:
        raise SourceError(
            f"creating publication {publication!r} FOR ALL TABLES needs a superuser: create it as one, "
            "or list --tables the role owns"
        )
    for table in tables:
        owner = pg.query_one(
            conn, "SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = to_regclass(%s)",
            (quote_table(table),),
        )  # fmt: skip
        if owner is not None and not owner[0]:
            raise SourceError(
                f"creating publication {publication!r} needs the role to own {table}: create the "
                "publication as its owner (or a superuser), or leave the table out of --tables"
            )


def ensure_publication(
    conn: psycopg.Connection[Any],
    publication: str,
    tables: list[str],
    published: list[PublishedTable] | None = None,
) -> list[str]:
    """Create ``publication`` (listed tables, or all) or check that it covers ``tables``.

    A publication cdc created gets the tables added to ``--tables`` since;
    one created by someone else must already publish them (`check_publication`).
    With ``published`` (patterns, column lists, row filters: cdc keeps the list),
    the publication is made to hold exactly those tables in those forms
    (``ALTER PUBLICATION ... SET TABLE``); returns the tables whose column list or
    row filter changed.
    """
    if published is not None:
        return _list_tables(conn, publication, published, commit=True)
    check_publication(conn, publication, tables)
    existing = publication_tables(conn, publication)
    wanted = {".".join(split_table(t)) for t in tables}
    name = sql.Identifier(publication)
    if existing is None:
        target: sql.Composable
        if tables:
            target = sql.SQL("FOR TABLE {}").format(
                sql.SQL(", ").join(sql.Identifier(*split_table(t)) for t in tables)
            )
        else:
            target = sql.SQL("FOR ALL TABLES")
        query = sql.SQL("CREATE PUBLICATION {} {} WITH (publish_via_partition_root = true)")
        with (
            pg.errors(
                f"creating publication {publication!r}",
                "create it as a superuser or table owner, or list --tables you own",
            ),
            conn.transaction(),
        ):
            conn.execute(query.format(name, target))
            conn.execute(
                sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(name, sql.Literal(MANAGED_PUBLICATION))
            )
        log.info("created publication %s for %s", publication, ", ".join(sorted(wanted)) or "all tables")
        return []
    all_tables, covered = existing
    missing = sorted(wanted - covered)
    if missing and not all_tables and _managed(conn, publication):
        added = sql.SQL(", ").join(sql.Identifier(*split_table(t)) for t in missing)
        with pg.errors(
            f"adding {', '.join(missing)} to publication {publication!r}",
            "add them as the publication's owner",
        ):
            conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(name, added))
        log.info("added %s to publication %s", ", ".join(missing), publication)
    return []


def alter_publication(
    conn: psycopg.Connection[Any],
    publication: str,
    add: list[PublishedTable] | None = None,
    drop: list[str] | None = None,
) -> None:
    """Add tables to (in their forms) or drop them from a publication cdc keeps, while streaming.

    An added table whose column list or row filter would break its UPDATEs is refused
    (`SourceError`) and nothing changes.
    """
    name = sql.Identifier(publication)
    with (
        pg.errors(f"changing publication {publication!r}", "change it as the publication's owner"),
        conn.transaction(),
    ):
        if add:
            conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(name, _tables_sql(add)))
            _check_identity(conn, publication, {t.name for t in add})
        if drop:
            dropped = sql.SQL(", ").join(sql.Identifier(*split_table(t)) for t in drop)
            conn.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(name, dropped))
    for form in add or ():
        log.info("added %s to publication %s", form.name, publication, extra={"table": form.name})
    for gone in drop or ():
        log.info("dropped %s from publication %s", gone, publication, extra={"table": gone})


def _tables_sql(tables: list[PublishedTable]) -> sql.Composable:
    """``t1 (a, b) WHERE (...), t2``: the table list of CREATE / ALTER PUBLICATION."""
    parts = []
    for table in tables:
        part: list[sql.Composable] = [sql.Identifier(*split_table(table.name))]
        if table.columns is not None:
            part.append(sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Identifier, table.columns))))
        if table.row_filter is not None:
            # the operator's own SQL, as --heartbeat-query is; the server parses and checks it
            part.append(sql.SQL("WHERE ({})").format(sql.SQL(table.row_filter)))
        parts.append(sql.SQL(" ").join(part))
    return sql.SQL(", ").join(parts)


class _Unchanged(Exception):
    """Rolls back a trial (or a change that changed nothing)."""


def _list_tables(
    conn: psycopg.Connection[Any], publication: str, tables: list[PublishedTable], commit: bool
) -> list[str]:
    """Make ``publication`` hold exactly ``tables`` in their forms, in one transaction.

    The server parses the column lists and row filters; then `_check_identity` refuses a
    form that would make the table's UPDATE or DELETE fail. ``commit`` False is the
    check before anything is created: everything is rolled back. Returns the tables
    whose column list or row filter changed (not those added).
    """
    name = sql.Identifier(publication)
    existing = publication_tables(conn, publication)
    if existing is not None and not _managed(conn, publication):
        return []  # someone else's: used as it is (cdc.shaping.catalog refused the rules it cannot keep)
    doing = ("checking" if not commit else "creating" if existing is None else "updating") + " publication"
    changed: list[str] = []
    before: dict[str, tuple[Any, Any]] = {}
    try:
        with (
            pg.errors(f"{doing} {publication!r}", "the role must own the tables (or be a superuser)"),
            conn.transaction(),
        ):
            if existing is None:
                target = sql.SQL(" FOR TABLE {}").format(_tables_sql(tables)) if tables else sql.SQL("")
                conn.execute(
                    sql.SQL("CREATE PUBLICATION {}{} WITH (publish_via_partition_root = true)").format(
                        name, target
                    )
                )
                conn.execute(
                    sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(name, sql.Literal(MANAGED_PUBLICATION))
                )
            else:
                before = listed_forms(conn, publication)
                if tables:
                    listed = _tables_sql(tables)
                    conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(name, listed))
                elif before:
                    dropped = sql.SQL(", ").join(sql.Identifier(*split_table(t)) for t in before)
                    conn.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(name, dropped))
            after = listed_forms(conn, publication)
            _check_identity(conn, publication, {t.name for t in tables})
            changed = sorted(t for t in after if t in before and after[t] != before[t])
            if not commit or (existing is not None and after == before):
                raise _Unchanged
    except _Unchanged:
        return changed
    if existing is None:
        listed_names = ", ".join(t.name for t in tables) or "no table yet"
        log.info("created publication %s for %s", publication, listed_names)
        return []
    for table in sorted(set(after) - set(before)):
        log.info("added %s to publication %s", table, publication, extra={"table": table})
    for table in sorted(set(before) - set(after)):
        log.info("dropped %s from publication %s", table, publication, extra={"table": table})
    for table in changed:
        log.warning(
            "the column list or row filter of %s changed: from now on its changes follow the new one; rows "
            "it now admits that do not change are not in kafka until `cdc snapshot %s`",
            table, table, extra={"table": table},
        )  # fmt: skip
    return changed


def listed_forms(conn: psycopg.Connection[Any], publication: str) -> dict[str, tuple[Any, Any]]:
    """{schema.table: (column list, row filter as the server prints it)} of the tables a publication
    lists by name (not FOR ALL TABLES nor TABLES IN SCHEMA); both None before PostgreSQL 15."""
    if conn.info.server_version < 150000:
        rows = pg.query(
            conn,
            """SELECT n.nspname, c.relname, NULL, NULL FROM pg_publication_rel pr
                 JOIN pg_publication p ON p.oid = pr.prpubid JOIN pg_class c ON c.oid = pr.prrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = %s""",
            (publication,),
        )
    else:
        rows = pg.query(
            conn,
            """SELECT n.nspname, c.relname,
                      (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                        WHERE a.attrelid = pr.prrelid AND a.attnum = ANY(pr.prattrs::int2[])),
                      pg_get_expr(pr.prqual, pr.prrelid)
                 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                 JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE p.pubname = %s""",
            (publication,),
        )
    return {f"{s}.{t}": (None if cols is None else tuple(cols), qual) for s, t, cols, qual in rows}


def _check_identity(conn: psycopg.Connection[Any], publication: str, tables: set[str]) -> None:
    """Refuse a column list or row filter that would make UPDATE and DELETE of the table fail.

    A publication that publishes updates and deletes needs, from PostgreSQL 15 on, every column of
    the replica identity in the column list, and a row filter that reads only identity columns
    (any column with REPLICA IDENTITY FULL, whose column list must then keep them all): the server
    checks it when the application updates a row, and refuses the UPDATE. cdc checks it first.
    """
    if conn.info.server_version < 150000:
        return
    rows = pg.query(
        conn,
        """SELECT n.nspname, c.relname, c.relreplident, pr.prattrs::int2[], pr.prqual::text,
                  (SELECT array_agg(a.attnum) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                      AND NOT a.attisdropped AND a.attgenerated = ''),
                  (SELECT i.indkey::int2[] FROM pg_index i WHERE i.indrelid = c.oid
                      AND CASE c.relreplident WHEN 'i' THEN i.indisreplident ELSE i.indisprimary END LIMIT 1),
                  p.pubupdate OR p.pubdelete
             FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
             JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE p.pubname = %s AND (pr.prattrs IS NOT NULL OR pr.prqual IS NOT NULL)""",
        (publication,),
    )
    for schema, relname, replident, attrs, qual, all_columns, key, updates in rows:
        table = f"{schema}.{relname}"
        if table not in tables or not updates or replident == "n":
            continue
        identity = set(all_columns or []) if replident == "f" else set(key or [])
        how = "REPLICA IDENTITY FULL (every column)" if replident == "f" else "replica identity"
        if attrs is not None and not identity <= set(attrs):
            left_out = _names(conn, schema, relname, sorted(identity - set(attrs)))
            fix = (
                "keep every column, or mask them with --mask-columns"
                if replident == "f"
                else f"keep {', '.join(left_out)} in the column list"
            )
            raise SourceError(
                f"the column list of {table} leaves out {', '.join(left_out)} of its {how}: its UPDATEs and "
                f"DELETEs would fail in the application; {fix}"
            )
        if qual is not None and replident != "f":
            used = {int(n) for n in re.findall(r":varattno (\d+)", qual)}
            outside = sorted(used - identity)
            if outside:
                names = _names(conn, schema, relname, outside)
                raise SourceError(
                    f"the row filter of {table} reads {', '.join(names)}, not part of its {how}: its "
                    f"UPDATEs and DELETEs would fail in the application; filter on its key columns, or "
                    f"ALTER TABLE {table} REPLICA IDENTITY FULL"
                )


def _names(conn: psycopg.Connection[Any], schema: str, table: str, attnums: list[int]) -> list[str]:
    rows = pg.query(
        conn,
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum = ANY(%s) "
        "ORDER BY attnum",
        (sql.Identifier(schema, table).as_string(None), attnums),
    )
    return [str(r[0]) for r in rows]


def is_managed(conn: psycopg.Connection[Any], publication: str) -> bool:
    """Was ``publication`` created by cdc (it carries cdc's comment)? Then cdc may change it."""
    return _managed(conn, publication)


def _managed(conn: psycopg.Connection[Any], publication: str) -> bool:
    row = pg.query_one(
        conn,
        "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s",
        (publication,),
    )
    return row is not None and row[0] == MANAGED_PUBLICATION


def primary_key(conn: psycopg.Connection[Any], relation_id: int) -> list[str]:
    """The primary key columns of a table, in key order ([] when it has none)."""
    rows = pg.query(
        conn,
        """SELECT a.attname FROM pg_index i
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
            WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.n""",
        (relation_id,),
    )
    return [str(r[0]) for r in rows]


def slot_creation_waits(conn: psycopg.Connection[Any], slot: str) -> Callable[[float], None]:
    """`ReplicationConnection.create_slot`'s ``waiting``: log which transactions hold the slot's
    consistent point back (a long-running one can keep a new slot waiting for hours)."""

    def report(seconds: float) -> None:
        rows = pg.query(
            conn,
            r"""SELECT pid, coalesce(extract(epoch FROM now() - xact_start), 0)::int, state,
                      left(regexp_replace(query, '\s+', ' ', 'g'), 80)
                 FROM pg_stat_activity
                WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend'
                ORDER BY xact_start LIMIT 3""",
        )
        if not rows:
            log.info("creating slot %s: waiting %.0f s for the server", slot, seconds)
            return
        pid, age, state, query = rows[0]
        log.warning(
            "creating slot %s waits for %d running transaction(s) to end (%.0f s so far); the oldest: "
            "pid %s, open %s s, %s: %s; end it (COMMIT, or pg_terminate_backend(%s)) to let cdc start",
            slot, len(rows), seconds, pid, age, state, query, pid,
        )  # fmt: skip

    return report


def current_database(conn: psycopg.Connection[Any]) -> str:
    row = pg.query_one(conn, "SELECT current_database()")
    return str(row[0]) if row else ""


# -- the replication connection --------------------------------------------------------


def _result_error(result: pq.abc.PGresult | None, pgconn: pq.abc.PGconn) -> tuple[str, str]:
    if result is not None:
        message = (result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode(errors="replace")
        state = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
        if message:
            return message, state
    return pgconn.get_error_message().strip(), ""


@dataclass(slots=True, frozen=True)
class SystemInfo:
    system_id: str
    timeline: int
    xlogpos: int
    dbname: str | None


class ReplicationConnection:
    """One walsender connection (``replication=database``); a context manager."""

    def __init__(self, dsn: str, application_name: str = "cdc") -> None:
        self.dsn = dsn
        conninfo = pg.session_conninfo(dsn, application_name, replication="database")
        try:
            self.pgconn = pq.PGconn.connect(conninfo.encode())
        except psycopg.Error as exc:
            raise pg.connect_error(exc, dsn) from None
        if self.pgconn.status != pq.ConnStatus.OK:
            message = self.pgconn.get_error_message()
            self.pgconn.finish()
            raise pg.connect_error(Exception(message), dsn)
        self.server_version = self.pgconn.server_version
        self.streaming = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.pgconn.finish()

    def command(
        self, query: str, waiting: Callable[[float], None] | None = None, stop: threading.Event | None = None
    ) -> list[tuple[str | None, ...]]:
        """Run a replication command and return its rows as text.

        With ``waiting``, the command runs without blocking, and ``waiting(seconds)`` is called
        after 2 s and every 10 s while the server works on it; ``stop`` cancels it.
        """
        result = self.pgconn.exec_(query.encode()) if waiting is None else self._wait(query, waiting, stop)
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            message, state = _result_error(result, self.pgconn)
            if self.pgconn.status == pq.ConnStatus.BAD:
                raise SourceUnavailable(f"replication connection lost: {message}")
            raise pg.command_error(query.split(maxsplit=1)[0], message, state)
        return [
            tuple(
                None if (v := result.get_value(r, c)) is None else bytes(v).decode()
                for c in range(result.nfields)
            )
            for r in range(result.ntuples)
        ]

    def _wait(
        self, query: str, waiting: Callable[[float], None], stop: threading.Event | None
    ) -> pq.abc.PGresult:
        pgconn = self.pgconn
        started = time.monotonic()
        next_call = started + 2.0
        try:
            pgconn.send_query(query.encode())
            while True:
                pgconn.consume_input()
                if not pgconn.is_busy():
                    break
                select.select([pgconn.socket], [], [], 0.5)
                now = time.monotonic()
                if stop is not None and stop.is_set():
                    pgconn.get_cancel().cancel()
                    stop = None  # the server answers the cancel with an error result
                elif now >= next_call:
                    waiting(now - started)
                    next_call = now + 10.0
            result = pgconn.get_result()
            while pgconn.get_result() is not None:  # the end of the command's results
                pass
        except psycopg.OperationalError as exc:
            raise SourceUnavailable(f"replication connection lost: {str(exc).strip()}") from None
        if result is None:
            raise SourceUnavailable(f"replication connection lost: {pgconn.get_error_message().strip()}")
        return result

    def identify_system(self) -> SystemInfo:
        row = self.command("IDENTIFY_SYSTEM")[0]
        return SystemInfo(str(row[0]), int(row[1] or 0), parse_lsn(row[2] or "0/0"), row[3])

    def create_slot(
        self,
        slot: str,
        export_snapshot: bool = False,
        failover: bool = False,
        waiting: Callable[[float], None] | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[int, str | None]:
        """Create a pgoutput slot; return (consistent point, exported snapshot name).

        An exported snapshot stays valid only until the next command on this
        connection, so a snapshot reader must use it before `start`.
        ``failover`` (PostgreSQL 17+) lets standbys with ``sync_replication_slots``
        keep a copy that survives their promotion. The server finds the slot's
        consistent point only once every transaction running when it began has
        ended: ``waiting`` hears about the wait (see `command`), ``stop`` ends it.
        """
        name = sql.Identifier(slot).as_string(None)
        if self.server_version >= 150000:
            mode = "'export'" if export_snapshot else "'nothing'"
            extra = ", FAILOVER true" if failover else ""
            query = f"CREATE_REPLICATION_SLOT {name} LOGICAL pgoutput (SNAPSHOT {mode}{extra})"
        else:
            mode = "EXPORT_SNAPSHOT" if export_snapshot else "NOEXPORT_SNAPSHOT"
            query = f"CREATE_REPLICATION_SLOT {name} LOGICAL pgoutput {mode}"
        row = self.command(query, waiting, stop)[0]
        log.info(
            "created slot %s at %s%s", slot, row[1], " (failover)" if failover else "", extra={"lsn": row[1]}
        )
        return parse_lsn(row[1] or "0/0"), row[2]

    def enable_failover(self, slot: str) -> None:
        """Mark an existing slot FAILOVER (PostgreSQL 17+; it must not be in use)."""
        self.command(f"ALTER_REPLICATION_SLOT {sql.Identifier(slot).as_string(None)} (FAILOVER true)")
        log.info("slot %s is now a failover slot", slot)

    def start(
        self,
        slot: str,
        publication: str,
        start_lsn: int = 0,
        proto_version: int | None = None,
        messages: bool = True,
        extra_options: dict[str, str] | None = None,
    ) -> int:
        """START_REPLICATION; returns the protocol version in use."""
        if proto_version is None:
            proto_version = min(MAX_PROTOCOL_VERSION, protocol_version_for(self.server_version))
        options = {
            "proto_version": f"'{proto_version}'",
            "publication_names": "'" + sql.Identifier(publication).as_string(None).replace("'", "''") + "'",
        }
        if messages:
            options["messages"] = "'true'"
        options.update(extra_options or {})
        opts = ", ".join(f"{k} {v}" for k, v in options.items())
        slot_name = sql.Identifier(slot).as_string(None)
        query = f"START_REPLICATION SLOT {slot_name} LOGICAL {format_lsn(start_lsn)} ({opts})"
        result = self.pgconn.exec_(query.encode())
        if result.status != pq.ExecStatus.COPY_BOTH:
            message, state = _result_error(result, self.pgconn)
            raise pg.command_error("START_REPLICATION", message, state)
        self.pgconn.nonblocking = 1
        self.streaming = True
        log.info(
            "streaming slot %s from %s (pgoutput protocol %s)", slot, format_lsn(start_lsn), proto_version,
            extra={"lsn": format_lsn(start_lsn)},
        )  # fmt: skip
        return proto_version

    def read(self, timeout: float) -> bytes | None:
        """The next CopyData frame, or None if none arrived within ``timeout`` seconds."""
        pgconn = self.pgconn
        deadline = 0.0
        while True:
            try:
                nbytes, data = pgconn.get_copy_data(1)
            except psycopg.OperationalError as exc:
                raise SourceUnavailable(f"replication stream lost: {str(exc).strip()}") from None
            if nbytes > 0:
                return bytes(data)
            if nbytes == -1:
                result = pgconn.get_result()
                message, _ = _result_error(result, pgconn)
                if pg.is_slot_lost(message):
                    raise SlotLost(f"the replication slot is lost: {message}; {pg.LOST_SLOT_FIX}")
                raise SourceUnavailable(
                    f"replication stream ended by the server: {message or 'no reason given'}"
                )
            if not deadline:
                deadline = time.monotonic() + timeout
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([pgconn.socket], [], [], remaining)
            if not ready:
                return None
            try:
                pgconn.consume_input()
            except psycopg.OperationalError as exc:
                raise SourceUnavailable(f"replication stream lost: {str(exc).strip()}") from None

    def send_status(
        self, written: int, flushed: int, applied: int | None = None, reply: bool = False
    ) -> None:
        """Standby status update: ``flushed`` is what the slot may forget."""
        now = int(time.time() * 1_000_000) - PG_EPOCH_US
        message = encode_standby_status(written, flushed, flushed if applied is None else applied, now, reply)
        try:
            if self.pgconn.put_copy_data(message) != 1:
                raise SourceUnavailable(f"cannot send status update: {self.pgconn.get_error_message()}")
            deadline = time.monotonic() + 10
            while self.pgconn.flush() == 1:
                if time.monotonic() > deadline:
                    raise SourceUnavailable("cannot send status update: socket stuck for 10 s")
                select.select([], [self.pgconn.socket], [], 1)
        except psycopg.OperationalError as exc:
            raise SourceUnavailable(f"cannot send status update: {str(exc).strip()}") from None
