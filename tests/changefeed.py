"""Statements streamed to Kafka by the real connector in ``--format avro`` (and a JSON twin).

`capture` starts the connector (in a thread, as `tests.pipeline` does) on
the given tables, runs the statements and returns once the connector has
confirmed them, that is once Kafka holds every record. With ``json_twin`` a
second connector with its own slot streams the same changes with
``--format json`` under ``<prefix>j``, so tests can compare the two formats
record by record.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cdc import avro
from tests.fix_servers import TestDb
from tests.pipeline import settings_for, wait_caught_up
from tests.support import running


@dataclass
class Captured:
    """The connector's serializer (its registry and compatibility verdicts) and the twin's prefix."""

    serializer: avro.AvroSerializer
    json_prefix: str | None = None


def capture(
    db: TestDb,
    bootstrap_servers: str,
    prefix: str,
    tables: Sequence[str],
    statements: Sequence[str],
    state_dir: Path,
    *,
    json_twin: bool = False,
) -> Captured:
    """Stream ``statements`` (run one by one once the connectors stream) on ``tables`` to Kafka."""
    settings = settings_for(db, bootstrap_servers, prefix, state_dir, format="avro", tables=list(tables))
    json_prefix = f"{prefix}j" if json_twin else None
    twin = (
        settings_for(db, bootstrap_servers, json_prefix, state_dir, format="json", tables=list(tables))
        if json_prefix
        else None
    )
    with running(settings) as run, running(twin) if twin else contextlib.nullcontext() as twin_run:
        for statement in statements:
            db.execute(statement)
        wait_caught_up(db, run)
        if twin_run is not None:
            wait_caught_up(db, twin_run)
    serializer = run.connector.serializer
    assert isinstance(serializer, avro.AvroSerializer)
    return Captured(serializer, json_prefix)
