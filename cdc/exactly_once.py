"""``--delivery exactly-once``: Kafka transactions that carry the position they reach.

A Kafka transaction holds whole Postgres transactions (several small ones, up
to ``--transaction-max-records`` records or ``--transaction-linger-ms``)
and, written in the same transaction, a record on the compacted
``<prefix>.offsets`` topic: the end LSN of the last Postgres transaction it
holds. Kafka makes both visible to read_committed consumers at once, or
neither. On start the connector reads that position (read_committed) and
streams from past it, so what Kafka committed is never written again; the
slot is confirmed only after the Kafka commit, as before. A snapshot chunk
is committed the same way: its rows and a record saying the chunk is done.

A second process with the same name registers the same transactional id and
so fences the first: whatever the first still writes is refused, and its
open transaction is aborted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import orjson

from cdc.checkpoint import InFlight
from cdc.config import Settings
from cdc.events import offsets_topic
from cdc.kafka import client_config, read_latest
from cdc.lsn import format_lsn, parse_lsn
from cdc.writer import RecordWriter

log = logging.getLogger(__name__)

VERSION = 1


def transactional_id(settings: Settings, worker: int | None = None) -> str:
    """One id per connector (and per snapshot worker): a restart fences what the old process left."""
    base = f"cdc-{settings.name}-{settings.slot}"
    return base if worker is None else f"{base}-snapshot-{worker}"


def position_key(settings: Settings) -> bytes:
    return f"{settings.name}:{settings.slot}".encode()


def chunk_key(settings: Settings, consistent_lsn: int, table: str, index: int) -> bytes:
    return f"{settings.name}:{settings.slot}:snapshot:{format_lsn(consistent_lsn)}:{table}:{index}".encode()


@dataclass(slots=True)
class Committed:
    """What the offsets topic says Kafka holds for this connector."""

    lsn: int = 0  # end LSN of the last Postgres transaction committed to Kafka
    #: snapshot chunks committed with their rows: (consistent lsn, table, chunk) -> rows
    chunks: dict[tuple[int, str, int], int] = field(default_factory=dict)


def read_committed(settings: Settings, system_id: str, database: str) -> Committed:
    """The committed position and snapshot chunks of this connector, read_committed."""
    found = Committed()
    prefix = f"{settings.name}:{settings.slot}"
    topic = offsets_topic(settings.topic_prefix)
    for key, value in read_latest(client_config(settings), topic).items():
        text = key.decode(errors="replace")
        if text != prefix and not text.startswith(prefix + ":snapshot:"):
            continue
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            log.warning("ignoring a malformed record of %s", offsets_topic(settings.topic_prefix))
            continue
        if data.get("system_id") != system_id or data.get("database") != database:
            continue  # another cluster's, with the same names
        if text == prefix:
            found.lsn = parse_lsn(data["lsn"])
        else:
            consistent, table, index = text[len(prefix) + len(":snapshot:") :].split(":", 2)
            found.chunks[(parse_lsn(consistent), table, int(index))] = int(data.get("rows", 0))
    return found


def _value(settings: Settings, system_id: str, database: str, **fields: object) -> bytes:
    return orjson.dumps(
        {
            "version": VERSION,
            "name": settings.name,
            "slot": settings.slot,
            "system_id": system_id,
            "database": database,
            "ts_ms": int(time.time() * 1000),
            **fields,
        }
    )


def commit_chunk(
    writer: RecordWriter,
    settings: Settings,
    system_id: str,
    database: str,
    consistent_lsn: int,
    table: str,
    index: int,
    rows: int,
) -> None:
    """The chunk's rows (already written in the open transaction) and its done record, committed."""
    topic = offsets_topic(settings.topic_prefix)
    writer.ensure_topic(topic, compact=True)
    value = _value(settings, system_id, database, rows=rows)
    writer.producer.send(topic, chunk_key(settings, consistent_lsn, table, index), value, InFlight(0))
    writer.producer.commit_transaction(120)


class TransactionBatch:
    """The stream's Kafka transactions: opened with the first record, committed with the position.

    ``committed`` is the end LSN Kafka holds; nothing past it may be confirmed
    to the slot except when the stream is idle (no Postgres transaction open,
    no Kafka transaction open), when the server's WAL end is as safe as ever.
    """

    def __init__(
        self, writer: RecordWriter, settings: Settings, system_id: str, database: str, committed: int
    ) -> None:
        self.writer = writer
        self.producer = writer.producer
        self.settings = settings
        self.system_id = system_id
        self.database = database
        self.topic = offsets_topic(settings.topic_prefix)
        self.key = position_key(settings)
        self.max_records = settings.transaction_max_records
        self.linger = settings.transaction_linger_ms / 1000
        self.committed = committed
        self.reached = committed  # end LSN of the last Postgres transaction in the open one
        self.active = False
        self.records = 0
        self.deadline = 0.0
        self.transactions = 0  # Kafka transactions committed, for the figures
        writer.ensure_topic(self.topic, compact=True)

    def open(self) -> None:
        """Before any record: begin a Kafka transaction unless one is open."""
        if not self.active:
            self.producer.begin_transaction()
            self.active = True
            self.records = 0
            self.deadline = time.monotonic() + self.linger

    def ended(self, end_lsn: int, records: int) -> bool:
        """A Postgres transaction (or a unit of its own) ended at ``end_lsn``: True when the Kafka
        transaction should commit now."""
        self.reached = max(self.reached, end_lsn)
        self.records += records
        return self.records >= self.max_records

    def commit(self) -> None:
        """The position record, then the commit: both visible, or neither."""
        if not self.active:
            return
        value = _value(self.settings, self.system_id, self.database, lsn=format_lsn(self.reached))
        self.producer.send(self.topic, self.key, value, InFlight(0))
        self.producer.commit_transaction(120)
        self.active = False
        self.committed = self.reached
        self.transactions += 1
