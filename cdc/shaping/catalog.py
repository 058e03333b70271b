"""The captured set from the catalog: tables matching the patterns, their column lists and row filters.

`plan` runs at each session start, before anything is created: it turns
``--tables`` / ``--exclude-tables`` into the tables Postgres has, and the
column rules into the publication's column lists (PostgreSQL 15+), checking
that every column named exists. `TableWatcher` repeats the table part every
``--table-check-interval`` while streaming: a new table that matches joins
the publication (when cdc keeps its list) and is read by an incremental
snapshot, since its rows from before it was published are not in the
stream; a dropped one leaves. The DDL itself, and the check that a column
list or row filter cannot break the application's UPDATEs, are
`cdc.replication`'s (`ensure_publication`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from cdc import pg, replication
from cdc.config import Settings
from cdc.errors import ConfigError, SourceError, SourceUnavailable
from cdc.replication import PublishedTable
from cdc.shaping.select import Rules, Selection, TableRules
from cdc.status import Status

log = logging.getLogger(__name__)


def publishable_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """Every table a publication may hold, as ``schema.table``: ordinary and partitioned tables that
    are not partitions (the root publishes them), not temporary, unlogged or system tables."""
    rows = pg.query(
        conn,
        """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
              AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'
              AND c.oid >= 16384""",
        doing="listing tables",
    )
    return sorted(f"{schema}.{name}" for schema, name in rows)


@dataclass(slots=True)
class Capture:
    """What a session captures, and how the publication holds it."""

    tables: list[str]
    #: the tables as the publication must hold them (column lists, row filters), when cdc keeps the
    #: publication's list itself; None when the list is given (`--tables` names) or the publication's own
    published: list[PublishedTable] | None
    #: per table, the rules of the settings (masks included), for the writer and the log
    rules: dict[str, TableRules]


def shaped(settings: Settings) -> bool:
    """Do these settings need the publication to list its tables (patterns, exclusions, column lists,
    row filters) rather than take ``--tables`` as given?"""
    selection = Selection.from_settings(settings)
    return Rules.from_settings(settings).shapes_publication or not (selection.exact or selection.everything)


def plan(conn: psycopg.Connection[Any], settings: Settings, listed: list[str]) -> Capture:
    """The tables to capture and their publication forms; refuses (`ConfigError`, `SourceError`) what
    cannot be: a pattern of rules for no captured table, a column that does not exist, column lists
    or row filters on a server before 15 or on a publication cdc does not keep.

    ``listed`` are the exact names of ``--tables`` that exist (the connector checked them).
    """
    s = settings
    selection = Selection.from_settings(s)
    rules = Rules.from_settings(s)
    version = conn.info.server_version
    if rules.shapes_publication and version < 150000:
        raise ConfigError(
            f"--columns, --exclude-columns and --row-filter need PostgreSQL 15 or later (the server is "
            f"{version // 10000}): leave them out, or mask columns with --mask-columns or a transform"
        )
    keeps_list = False  # cdc keeps the publication's list: it holds the tables in their forms
    if not shaped(s):
        tables = list(listed) if listed else sorted(_published(conn, s.publication))
    else:
        existing = replication.publication_tables(conn, s.publication)
        if existing is not None and not replication.is_managed(conn, s.publication):
            if rules.shapes_publication:
                raise ConfigError(
                    f"publication {s.publication!r} was not made by cdc, so cdc cannot give it column "
                    "lists or row filters: set them on it yourself (ALTER PUBLICATION ... SET TABLE t "
                    "(columns) WHERE (...); the snapshot follows them) and leave out --columns, "
                    "--exclude-columns and --row-filter, or let cdc make its own --publication"
                )
            tables = sorted({*listed, *selection.pick(existing[1])})
            _warn_unselected(s.publication, existing[1], tables)
        elif existing is not None and existing[0]:
            raise ConfigError(
                f"publication {s.publication!r} publishes all tables, so it cannot leave tables or columns "
                "out: choose another --publication (cdc makes it) or drop it (cdc drop --keep-publication "
                "keeps it; DROP PUBLICATION removes it)"
            )
        else:
            keeps_list = True
            tables = sorted({*listed, *selection.pick(publishable_tables(conn))})
            if not tables:
                log.warning("no table matches --tables %s yet: waiting for one", selection.describe())
    unmatched = rules.unmatched(tables)
    if unmatched:
        raise ConfigError(
            f"{unmatched[0]} has column or row rules but is not captured: add it to --tables, or fix its name"
        )
    per_table = {name: rules.for_table(name) for name in tables}
    forms = {name: _form(conn, name, per_table[name]) for name in tables if per_table[name].required
             or per_table[name].shapes_publication}  # fmt: skip
    published = [forms.get(name) or PublishedTable(name) for name in tables] if keeps_list else None
    return Capture(tables, published, per_table)


def _published(conn: psycopg.Connection[Any], publication: str) -> set[str]:
    existing = replication.publication_tables(conn, publication)
    return existing[1] if existing else set()


def _warn_unselected(publication: str, published: set[str], captured: list[str]) -> None:
    others = sorted(published - set(captured))
    if others:
        log.warning(
            "publication %s (not made by cdc) also publishes %s, which --tables leaves out: their changes "
            "are streamed anyway; drop them from the publication, or let cdc make its own",
            publication,
            ", ".join(others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else ""),
        )


def _form(conn: psycopg.Connection[Any], table: str, rules: TableRules) -> PublishedTable:
    """The publication form of ``table`` under ``rules``; every column a rule names must exist."""
    rows = pg.query(
        conn,
        """SELECT a.attname, a.attgenerated <> '' FROM pg_attribute a
            WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
        (replication.quote_table(table),),
        doing=f"reading the columns of {table}",
    )
    names = [str(r[0]) for r in rows]
    missing = [c for c in rules.required if c not in names]
    if missing:
        raise ConfigError(f"column {missing[0]} of {table} does not exist: fix the column rules of {table}")
    columns: tuple[str, ...] | None = None
    if rules.columns is not None:
        wanted = set(rules.columns)
        columns = tuple(n for n in names if n in wanted)
        if not columns:
            raise ConfigError(f"--columns leaves no column of {table}: name at least its key")
    elif rules.excluded:
        columns = tuple(n for (n, generated) in ((str(r[0]), r[1]) for r in rows) if not generated
                        and n not in rules.excluded)  # fmt: skip
        if not columns:
            raise ConfigError(f"--exclude-columns leaves no column of {table}")
    return PublishedTable(table, columns, rules.row_filter)


def _oids(conn: psycopg.Connection[Any], tables: list[str]) -> dict[str, int | None]:
    """The oid each ``schema.table`` names now (None: no such table)."""
    if not tables:
        return {}
    rows = pg.query(
        conn,
        "SELECT t, to_regclass(q)::oid FROM unnest(%s::text[], %s::text[]) AS u(t, q)",
        (tables, [replication.quote_table(t) for t in tables]),
        doing="looking up the captured tables",
    )
    return {str(t): (int(oid) if oid is not None else None) for t, oid in rows}


class TableWatcher:
    """Tables that start or stop matching while streaming, looked for every ``--table-check-interval``.

    ``joined`` is called with the tables that joined and need reading (their rows from before they
    were published are not in the stream); the `Status` lists the captured set.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        settings: Settings,
        status: Status,
        capture: Capture,
        joined: Callable[[list[str]], None],
        recreated: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.status = status
        self.selection = Selection.from_settings(settings)
        self.rules = Rules.from_settings(settings)
        self.listing = capture.published is not None  # cdc keeps the publication's list
        self.managed = replication.is_managed(conn, settings.publication)
        self.captured = set(capture.tables)
        self.joined = joined
        self.recreated = recreated
        self.refused: set[str] = set()  # tables that match but cannot be added (logged once)
        self.oids = _oids(conn, sorted(self.captured))  # a table dropped and created again: a new oid
        self.next_at = time.monotonic() + settings.table_check_interval
        status.tables = sorted(self.captured)

    def tick(self) -> None:
        """Every status interval; looks at the catalog once ``--table-check-interval`` passed."""
        interval = self.settings.table_check_interval
        if not interval or time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + interval
        try:
            self.check()
        except SourceUnavailable:
            raise
        except SourceError as exc:  # a refused catalog query: the stream goes on, the next look retries
            log.warning("looking for new tables failed: %s", exc)

    def check(self) -> None:
        s = self.settings
        existing = replication.publication_tables(self.conn, s.publication)
        published = existing[1] if existing else set()
        all_tables = bool(existing and existing[0])
        reread = self._put_back(published, all_tables)
        if reread:
            existing = replication.publication_tables(self.conn, s.publication)
            published = existing[1] if existing else set()
        if self.listing:
            wanted = set(self.selection.pick(publishable_tables(self.conn)))
            wanted |= published & set(self.selection.names)  # a listed partition, say: it stays
            self._relist(wanted - published - self.refused, published - wanted)
            existing = replication.publication_tables(self.conn, s.publication)
            published = existing[1] if existing else set()
            now = published
        else:
            now = set(self.selection.pick(published))
        oids = _oids(self.conn, sorted(now))
        reread |= {t for t in now if t in self.oids and oids.get(t) not in (None, self.oids[t])}
        self.oids = oids
        if reread and self.recreated is not None:
            self.recreated(sorted(reread))
        joined = sorted(now - self.captured - reread)
        left = sorted(self.captured - now)
        if not joined and not left:
            self.captured = now
            return
        self.captured = now
        self.status.tables = sorted(now)
        for table in left:
            log.info("table %s left the capture (dropped, renamed or no longer matching)", table,
                     extra={"table": table})  # fmt: skip
        if joined:
            for table in joined:
                log.info("table %s joined the capture (it matches --tables %s)", table,
                         self.selection.describe(), extra={"table": table})  # fmt: skip
            if all_tables:
                return  # published since it was created: the stream has every row of it
            self.joined(joined)
        self.status.report()

    def _put_back(self, published: set[str], all_tables: bool) -> set[str]:
        """``--tables`` names that exist but are missing from the publication cdc made (dropped and
        created again, or dropped from it by hand) go back into it; they are read again."""
        if self.listing or all_tables or not self.managed:
            return set()
        missing = [t for t in self.selection.names if t not in published and t not in self.refused]
        present = [t for t, oid in _oids(self.conn, missing).items() if oid is not None]
        if not present:
            return set()
        try:
            replication.alter_publication(
                self.conn, self.settings.publication, add=[PublishedTable(t) for t in present]
            )
        except SourceError as exc:
            if isinstance(exc, SourceUnavailable):
                raise
            self.refused.update(present)
            log.error("cannot put %s back into publication %s: %s", ", ".join(present),
                      self.settings.publication, exc)  # fmt: skip
            return set()
        for table in present:
            log.warning("table %s was missing from publication %s (dropped and created again, or "
                        "dropped from it by hand): it is back in it", table, self.settings.publication,
                        extra={"table": table})  # fmt: skip
        return set(present)

    def _relist(self, add: set[str], drop: set[str]) -> None:
        """Add the new tables to the publication one by one (one refused does not keep out the others),
        and drop those that no longer match."""
        s = self.settings
        for table in sorted(add):
            rules = self.rules.for_table(table)
            try:
                form = _form(self.conn, table, rules) if rules.shapes_publication else PublishedTable(table)
                replication.alter_publication(self.conn, s.publication, add=[form])
            except (ConfigError, SourceError) as exc:
                if isinstance(exc, SourceUnavailable):
                    raise
                self.refused.add(table)
                log.error("table %s matches --tables but cannot be captured: %s", table, exc,
                          extra={"table": table})  # fmt: skip
        if drop:
            try:
                replication.alter_publication(self.conn, s.publication, drop=sorted(drop))
            except SourceError as exc:
                if isinstance(exc, SourceUnavailable):
                    raise
                log.warning("cannot drop %s from publication %s: %s", ", ".join(sorted(drop)),
                            s.publication, exc)  # fmt: skip
