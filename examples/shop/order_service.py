"""The order service: an order, its lines and the OrderPlaced event in one transaction.

Nothing here knows about Kafka: the order and its event commit together or
not at all, and cdc carries the event on (the transactional outbox).

    SHOP_DSN=dbname=shop python examples/shop/order_service.py place ada KB-01:1 MS-02:2
    SHOP_DSN=dbname=shop python examples/shop/order_service.py pay 1
"""

from __future__ import annotations

import os
import sys
from decimal import Decimal

import psycopg

import outbox

PRICES = {"KB-01": Decimal("49.90"), "MS-02": Decimal("19.50"), "MN-03": Decimal("189.00")}


def place_order(db: psycopg.Connection, customer: str, lines: dict[str, int]) -> int:
    """Place an order; its id. The order, its lines and its event are one transaction."""
    with db.transaction():
        row = db.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id", (customer,)).fetchone()
        assert row is not None
        order_id = int(row[0])
        for sku, qty in lines.items():
            db.execute(
                "INSERT INTO order_lines (order_id, sku, qty, price) VALUES (%s, %s, %s, %s)",
                (order_id, sku, qty, PRICES[sku]),
            )
        payload = {
            "order_id": order_id,
            "customer": customer,
            "lines": [{"sku": s, "qty": q} for s, q in lines.items()],
        }
        outbox.write(db, "order", order_id, "OrderPlaced", payload)
    return order_id


def mark_paid(db: psycopg.Connection, order_id: int) -> None:
    with db.transaction():
        db.execute("UPDATE orders SET status = 'paid' WHERE id = %s", (order_id,))
        outbox.write(db, "order", order_id, "OrderPaid", {"order_id": order_id})


def main() -> None:
    command, *args = sys.argv[1:]
    with psycopg.connect(os.environ["SHOP_DSN"], autocommit=True) as db:
        if command == "place":
            customer, *items = args
            lines = {sku: int(qty) for sku, _, qty in (item.partition(":") for item in items)}
            print(f"order {place_order(db, customer, lines)} placed for {customer}: {', '.join(items)}")
        elif command == "pay":
            mark_paid(db, int(args[0]))
            print(f"order {args[0]} paid")


if __name__ == "__main__":
    main()
