"""`make demo`: the whole loop on local servers, then everything stopped again.

Starts a Postgres and a broker (`cdc dev up`), creates a small order /
inventory / shipping schema, runs `cdc start --detach`, makes changes the way
an order service would (an order with its lines, stock reservations, a
shipment, an outbox message, a cancellation), prints the change events as
`cdc consume` decodes them, shows `cdc status`, and stops it all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psycopg

from cdc import dev

SCHEMA = """
CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2) NOT NULL,
                       stock int NOT NULL CHECK (stock >= 0));
CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL, status text NOT NULL,
                     placed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE order_lines (order_id bigint REFERENCES orders, sku text REFERENCES products,
                          qty int NOT NULL, PRIMARY KEY (order_id, sku));
CREATE TABLE shipments (id bigserial PRIMARY KEY, order_id bigint REFERENCES orders,
                        carrier text, shipped_on date);
INSERT INTO products VALUES ('KB-01', 'keyboard', 49.90, 10), ('MS-02', 'mouse', 19.50, 25);
"""

BUSINESS = [
    # one order: the order, its lines and the stock it reserves commit together
    """WITH o AS (INSERT INTO orders (customer, status) VALUES ('ada', 'placed') RETURNING id)
       INSERT INTO order_lines SELECT id, sku, qty FROM o, (VALUES ('KB-01', 1), ('MS-02', 2)) v(sku, qty);
       UPDATE products SET stock = stock - 1 WHERE sku = 'KB-01';
       UPDATE products SET stock = stock - 2 WHERE sku = 'MS-02';
       SELECT pg_logical_emit_message(true, 'outbox', '{"event": "OrderPlaced", "customer": "ada"}');""",
    # shipping picks it up
    """INSERT INTO shipments (order_id, carrier, shipped_on)
         SELECT max(id), 'DHL', DATE '2026-11-25' FROM orders;
       UPDATE orders SET status = 'shipped' WHERE id = (SELECT max(id) FROM orders);""",
    # a second order is cancelled: its lines go away
    """INSERT INTO orders (customer, status) VALUES ('grace', 'placed');
       INSERT INTO order_lines SELECT max(id), 'MS-02', 1 FROM orders;""",
    """DELETE FROM order_lines WHERE order_id = (SELECT max(id) FROM orders);
       UPDATE orders SET status = 'cancelled' WHERE id = (SELECT max(id) FROM orders);""",
]

TOPICS = ["products", "orders", "order_lines", "shipments"]


def run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cdc", *args], env=env, text=True, capture_output=True, check=False
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `cdc {' '.join(args[:1])}` failed: {proc.stderr.strip()}")
    return proc


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="cdc-demo-"))
    dev_dir = workdir / "dev"
    say("starting a local Postgres and a Kafka-compatible broker (cdc dev up)")
    env_vars = dev.up(dev_dir)
    env = dict(os.environ)
    for line in Path(env_vars["CDC_ENV_FILE"]).read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'")
    env.update(CDC_STATE_DIR=str(workdir / "state"), CDC_NAME="shop", CDC_TOPIC_PREFIX="shop")
    try:
        say("creating the order / inventory / shipping schema")
        with psycopg.connect(env["CDC_DSN"], autocommit=True) as conn:
            conn.execute(SCHEMA)
        say("cdc start --detach")
        print(run(["start", "--detach", "--snapshot", "never"], env).stdout.strip())
        say("the order service at work")
        with psycopg.connect(env["CDC_DSN"], autocommit=True) as conn:
            for statement in BUSINESS:
                print("  " + " ".join(statement.split())[:100] + " ...")
                conn.execute(statement)
        time.sleep(2)
        say("change events, decoded from Avro as `cdc consume` prints them (in commit order)")
        topics = [f"shop.public.{t}" for t in TOPICS] + ["shop.messages"]
        print(_consume(topics, env), end="")
        say("cdc status")
        print(run(["status"], env).stdout, end="")
    finally:
        say("stopping everything")
        stopped = run(["stop", "--timeout", "60"], env, check=False)
        print((stopped.stdout or stopped.stderr).strip())
        dev.down(dev_dir)
        print("done: no server or connector left running")


def _consume(topics: list[str], env: dict[str, str]) -> str:
    """One line per event, decoded from Avro with `cdc.consume`, in commit order across topics."""
    from cdc.consume import ChangeConsumer  # noqa: PLC0415

    lines: list[tuple[tuple[int, int, int], str]] = []
    last: dict[tuple[str, int], tuple[int, int, int]] = {}
    with ChangeConsumer(topics, env["CDC_BOOTSTRAP_SERVERS"], topic_prefix="shop", from_beginning=True) as c:
        for r in c.records(idle_timeout=2):
            if r.error:
                lines.append(((0, 0, 0), f"{r.topic:<24} error: {r.error}"))
                continue
            if r.value is None:  # a tombstone follows its delete in the same partition
                previous = last.get((r.topic, r.partition), (0, 0, 0))
                position = (*previous[:2], previous[2] + 1)
                lines.append((position, f"{r.topic:<24} tombstone key={orjson.dumps(r.key).decode()}"))
                continue
            source, txn = r.value["source"], r.value.get("transaction") or {}
            position = (int(source["commit_lsn"]), int(txn.get("total_order", 0)), 0)
            last[(r.topic, r.partition)] = position
            row = r.value.get("after") or r.value.get("before") or r.value.get("message")
            lines.append((position, f"{r.topic:<24} op={r.value['op']} {orjson.dumps(row).decode()}"))
    return "".join(f"  {text}\n" for _, text in sorted(lines))


if __name__ == "__main__":
    main()
