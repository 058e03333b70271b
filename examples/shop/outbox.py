"""The shop's events, and the one place that knows how they travel.

A service writes an event into its ``outbox`` table in the same transaction
as the state it is about (`write`); the connector captures the table; a
consumer turns what arrives back into an `Event` (`event_of`) and never
looks at the transport itself.

SEAM: the outbox event router (issue 20, Debezium's EventRouter on the transform API) is not in
cdc yet. Until it is, the events arrive as ordinary row changes of ``<prefix>.public.outbox``
and `event_of` reads them from the row (`topic` names that topic). Once the router exists,
the connector routes each outbox row to ``<prefix>.outbox.<aggregatetype>`` (key: the aggregate
id, value: the payload, the event id and type in headers): set ``ROUTED = True``, make `event_of`
read that record, and the services keep working unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cdc.sink import Change

ROUTED = False  # SEAM: True once the connector routes the outbox (<prefix>.outbox.<aggregatetype>)


@dataclass(frozen=True)
class Event:
    id: str
    aggregatetype: str  # "order", "inventory"
    aggregateid: str  # the order id
    type: str  # "OrderPlaced", "StockReserved", ...
    payload: dict[str, Any]


def topic(prefix: str, aggregatetype: str) -> str:
    """Where the events of ``aggregatetype`` written by the service behind ``prefix`` arrive."""
    if ROUTED:
        return f"{prefix}.outbox.{aggregatetype}"
    return f"{prefix}.public.outbox"  # SEAM: the raw outbox table, every aggregate type in it


def event_of(change: Change) -> Event | None:
    """The event a consumed record carries; None for anything else (a delete of an old outbox row)."""
    if ROUTED:  # SEAM: read the routed record here (payload in the value, id and type in headers)
        raise NotImplementedError("the outbox router is not in cdc yet")
    if change.op not in ("c", "r") or change.after is None:
        return None
    row = change.after
    payload = row["payload"]  # jsonb arrives as its JSON text
    return Event(
        str(row["id"]),
        row["aggregatetype"],
        row["aggregateid"],
        row["type"],
        json.loads(payload) if isinstance(payload, str) else payload,
    )


def write(db: Any, aggregatetype: str, aggregateid: object, type: str, payload: dict[str, Any]) -> None:
    """Record an event in the outbox: call it inside the transaction that changes the state."""
    db.execute(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES (%s, %s, %s, %s)",
        (aggregatetype, str(aggregateid), type, json.dumps(payload)),
    )
