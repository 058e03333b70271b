"""The inventory service: stock reserved for every OrderPlaced, once, in its own database.

It consumes the order service's events with `cdc.sink.Sink`: each event is
handed to `on_event` inside a transaction of the inventory database, and
the sink commits it together with the event's position. A crash or a
restart never reserves an order twice, and never loses one. The outcome
is emitted as the inventory's own event (StockReserved or OutOfStock), in
the same transaction, for whoever cares: a logical message the connector's
outbox router sends on to ``inventory.outbox.inventory`` (no outbox table).

    python examples/shop/inventory_service.py inventory.toml   # [sink]: dsn, topics; bootstrap_servers
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from cdc.sink import Change
from cdc.sink import run as run_sink
from cdc.sink import settings as sink_settings

import outbox


class OutOfStock(Exception):
    pass


def reserve(db: psycopg.Connection, lines: list[dict[str, object]]) -> bool:
    """Reserve every line, or none (a savepoint)."""
    try:
        with db.transaction():
            for line in lines:
                updated = db.execute(
                    "UPDATE stock SET reserved = reserved + %(qty)s"
                    " WHERE sku = %(sku)s AND on_hand - reserved >= %(qty)s",
                    line,
                )
                if updated.rowcount != 1:
                    raise OutOfStock(line["sku"])
    except OutOfStock:
        return False
    return True


def on_event(db: psycopg.Connection, change: Change) -> None:
    """Called by the sink, inside the inventory's transaction, for each record of the order events."""
    event = outbox.event_of(change)
    if event is None or event.type != "OrderPlaced":
        return
    lines = event.payload["lines"]
    ok = reserve(db, lines)
    status = "reserved" if ok else "out_of_stock"
    db.execute(
        "INSERT INTO reservations (order_id, status, lines) VALUES (%s, %s, %s)",
        (event.payload["order_id"], status, Jsonb(lines)),
    )
    outbox.emit(db, "inventory", event.aggregateid, "StockReserved" if ok else "OutOfStock", event.payload)
    logging.info("order %s: %s", event.aggregateid, status)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s inventory: %(message)s")
    settings = sink_settings.build({}, Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    run_sink(settings, on_event)  # until SIGTERM


if __name__ == "__main__":
    main()
