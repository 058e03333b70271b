"""The shop's events, and the one place that knows how they travel.

A service records an event in the same transaction as the state it is about,
in one of two ways the connector's outbox router (``--outbox-table``,
``--outbox-messages``) turns into the same Kafka record:

- `write`: a row of the ``outbox`` table, deleted again in the same
  transaction (the router routes the insert and ignores the delete: the
  table stays empty);
- `emit`: a transactional logical message with the prefix ``outbox`` (no
  table at all).

Either way the event arrives on ``<prefix>.outbox.<aggregatetype>``, keyed
by the aggregate id (one order's events stay in order), the payload as the
value, the event's id and type in headers. A consumer turns the record back
into an `Event` (`event_of`) and never looks at the transport itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cdc.sink import Change


@dataclass(frozen=True)
class Event:
    id: str
    aggregatetype: str  # "order", "inventory"
    aggregateid: str  # the order id
    type: str  # "OrderPlaced", "StockReserved", ...
    payload: dict[str, Any]


def topic(prefix: str, aggregatetype: str) -> str:
    """Where the events of ``aggregatetype`` written by the service behind ``prefix`` arrive."""
    return f"{prefix}.outbox.{aggregatetype}"


def event_of(change: Change) -> Event | None:
    """The event a record of an outbox topic carries; None for anything else."""
    if change.op or "id" not in change.headers or not isinstance(change.value, dict):
        return None
    return Event(
        change.headers["id"].decode(),
        change.topic.rpartition(".")[2],
        str(change.key),
        change.headers["type"].decode(),
        change.value,
    )


def write(db: Any, aggregatetype: str, aggregateid: object, type: str, payload: dict[str, Any]) -> None:
    """Record an event in the outbox table: call it inside the transaction that changes the state."""
    row = db.execute(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES (%s, %s, %s, %s) RETURNING id",
        (aggregatetype, str(aggregateid), type, json.dumps(payload)),
    ).fetchone()
    db.execute("DELETE FROM outbox WHERE id = %s", (row[0],))  # routed already: keep the table empty


def emit(db: Any, aggregatetype: str, aggregateid: object, type: str, payload: dict[str, Any]) -> None:
    """Record an event as a logical message (no outbox table): inside the transaction, too."""
    event = {
        "aggregatetype": aggregatetype,
        "aggregateid": str(aggregateid),
        "type": type,
        "payload": payload,
    }
    db.execute("SELECT pg_logical_emit_message(true, 'outbox', %s)", (json.dumps(event),))
