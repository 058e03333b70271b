"""``python -m tests.sink_audit``: `cdc sink postgres` that also records every change it applies.

The record goes into ``sink_audit`` of the target, in the same target
transaction as the change itself, keyed by the change's position
``(commit_lsn, total_order)``; a position applied again counts ``times``
up. So after any number of kill -9s, ``sink_audit`` says exactly which
changes are in the target, how often (once, or the sink failed), in which
target transaction (a source transaction in one, or it was not atomic) and
in which order (``seq``). Settings come from the environment as for
`cdc sink postgres` (``CDC_SINK_*``, ``CDC_BOOTSTRAP_SERVERS``).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import psycopg

from cdc import logs
from cdc.sink import Change, TableApplier, Target, runner
from cdc.sink import settings as sink_settings

AUDIT = """
CREATE TABLE IF NOT EXISTS sink_audit (
    seq bigserial, commit_lsn bigint NOT NULL, total_order bigint NOT NULL, topic text NOT NULL,
    key text, op text NOT NULL, version int, source_txn text, target_xid bigint NOT NULL,
    times int NOT NULL DEFAULT 1, PRIMARY KEY (commit_lsn, total_order))
"""


class Audited:
    """`TableApplier`, and a row of ``sink_audit`` per change it applies."""

    pipeline = True

    def __init__(self, inner: TableApplier) -> None:
        self.inner = inner

    def open(self, target: Target) -> None:
        self.inner.open(target)

    def __call__(self, db: psycopg.Connection[Any], change: Change) -> None:
        self.inner(db, change)
        if change.op not in ("c", "u", "d"):
            return
        row = change.after or change.before or {}
        db.execute(
            "INSERT INTO sink_audit (commit_lsn, total_order, topic, key, op, version, source_txn, "
            "target_xid) VALUES (%s, %s, %s, %s, %s, %s, %s, txid_current()) "
            "ON CONFLICT (commit_lsn, total_order) DO UPDATE SET times = sink_audit.times + 1",
            (
                change.commit_lsn,
                change.total_order,
                change.topic,
                orjson.dumps(change.key, option=orjson.OPT_SORT_KEYS).decode(),
                change.op,
                row.get("version"),
                change.transaction_id,
            ),
        )


def main() -> None:
    settings = sink_settings.build({})
    sink_settings.require_dsn(settings)
    logs.configure(settings.log_format, settings.log_level)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        conn.execute(AUDIT)
    applier = TableApplier(settings.table_map, settings.unavailable_placeholder, settings.create_tables)
    runner.run(settings, Audited(applier))


if __name__ == "__main__":
    main()
