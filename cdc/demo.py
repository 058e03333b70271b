"""`make demo`: the shop of ``examples/shop`` end to end on local servers, then everything stopped.

Starts a Postgres and a broker (`cdc dev up`) and gives each service its own
database: the order service's ``shop``, the inventory service's
``inventory``, the shipping read model's ``shipping``. Two connectors
capture ``shop`` and ``inventory`` and route their outboxes (a table in
``shop``, logical messages in ``inventory``) to ``<prefix>.outbox.<type>``;
the inventory service consumes the order events and reserves stock (`cdc.sink.Sink` with its
own handler); ``cdc sink postgres`` keeps the shipping read model. The order
service then places orders; the demo prints the events per topic, the read
model's rows and the lag, and stops every process it started.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc import dev

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "shop"

STOCK = "INSERT INTO stock (sku, on_hand) VALUES ('KB-01', 10), ('MS-02', 25), ('MN-03', 1)"

#: What the order service does: (arguments of examples/shop/order_service.py)
ORDERS = [
    ["place", "ada", "KB-01:1", "MS-02:2"],
    ["place", "grace", "MN-03:2"],  # more monitors than there are: out of stock
    ["place", "linus", "MS-02:1", "MN-03:1"],
    ["pay", "1"],
]

#: The shipping read model: what it needs of the other services' tables.
READ_MODEL = """
SELECT o.id, o.customer, o.status, count(l.sku) AS lines, sum(l.qty * l.price) AS total,
       coalesce(r.status, 'waiting for inventory') AS stock
  FROM orders o
  LEFT JOIN order_lines l ON l.order_id = o.id
  LEFT JOIN reservations r ON r.order_id = o.id
 GROUP BY o.id, o.customer, o.status, r.status
 ORDER BY o.id
"""


def run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cdc", *args], env=env, text=True, capture_output=True, check=False
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `cdc {' '.join(args[:1])}` failed: {proc.stderr.strip()}")
    return proc


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def database(dsn: str, name: str) -> str:
    """Create database ``name`` in the server of ``dsn``; its dsn."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo("", **{**conninfo_to_dict(dsn), "dbname": name})


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{orjson.dumps(k).decode()} = {_toml(v)}" for k, v in value.items()) + " }"
    return orjson.dumps(value).decode()


def toml(path: Path, top: dict[str, str], sink: dict[str, Any]) -> Path:
    """A config file: the shared settings at the top, the sink's in [sink] (mode 600: it holds a dsn)."""
    lines = [f"{k} = {_toml(v)}" for k, v in top.items()]
    lines += ["[sink]", *(f"{k} = {_toml(v)}" for k, v in sink.items())]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def main() -> None:
    if not (EXAMPLES / "inventory_service.py").exists():
        raise SystemExit(f"demo: {EXAMPLES} is missing: make demo runs from a checkout of cdc")
    workdir = Path(tempfile.mkdtemp(prefix="cdc-demo-"))
    dev_dir = workdir / "dev"
    say("starting a local Postgres and a Kafka-compatible broker (cdc dev up)")
    env_vars = dev.up(dev_dir)
    env = dict(os.environ)
    for line in Path(env_vars["CDC_ENV_FILE"]).read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'")
    env["CDC_STATE_DIR"] = str(workdir / "state")
    bootstrap = env["CDC_BOOTSTRAP_SERVERS"]
    services: list[subprocess.Popen[bytes]] = []
    connectors: list[str] = []
    try:
        say("three databases, one per service: shop (orders), inventory (stock), shipping (a read model)")
        dsns = {name: database(env["CDC_DSN"], name) for name in ("shop", "inventory", "shipping")}
        with psycopg.connect(dsns["shop"], autocommit=True) as conn:
            conn.execute((EXAMPLES / "shop.sql").read_text())
        with psycopg.connect(dsns["inventory"], autocommit=True) as conn:
            conn.execute((EXAMPLES / "inventory.sql").read_text())
            conn.execute(STOCK)
        print("  stock: KB-01 10, MS-02 25, MN-03 1")

        say("two connectors, each routing its service's outbox to PREFIX.outbox.<aggregatetype>")
        for name, tables, outbox_option in (
            ("shop", "public.orders,public.order_lines,public.outbox", ["--outbox-table", "public.outbox"]),
            ("inventory", "public.reservations", ["--outbox-messages"]),
        ):
            started = run(
                ["start", "--detach", "--name", name, "--topic-prefix", name, "--tables", tables,
                 "--snapshot", "never", "--transaction-metadata", *outbox_option],
                {**env, "CDC_DSN": dsns[name]},
            )  # fmt: skip
            connectors.append(name)
            print(f"  {started.stdout.strip()}: {tables} {' '.join(outbox_option)}")

        say("the inventory service (examples/shop/inventory_service.py), the read model (cdc sink postgres)")
        inventory = toml(
            workdir / "inventory.toml",
            {"bootstrap_servers": bootstrap},
            {"dsn": dsns["inventory"], "topics": ["shop.outbox.order"]},
        )
        shipping = toml(
            workdir / "shipping.toml",
            {"bootstrap_servers": bootstrap},
            {
                "dsn": dsns["shipping"],
                "topics": ["shop.public.orders", "shop.public.order_lines", "inventory.public.reservations"],
                "transaction_metadata": True,
            },
        )
        for name, command in (
            ("inventory", [sys.executable, str(EXAMPLES / "inventory_service.py"), str(inventory)]),
            ("shipping", [sys.executable, "-m", "cdc", "sink", "postgres", "--config", str(shipping)]),
        ):
            with (workdir / f"{name}.log").open("wb") as log:
                services.append(
                    subprocess.Popen(
                        command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
                    )
                )
            print(f"  {name}: pid {services[-1].pid}, log {workdir / f'{name}.log'}")

        say("the order service at work (examples/shop/order_service.py)")
        for args in ORDERS:
            placed = subprocess.run(
                [sys.executable, str(EXAMPLES / "order_service.py"), *args],
                env={**env, "SHOP_DSN": dsns["shop"]},
                text=True,
                capture_output=True,
                check=False,
            )
            if placed.returncode != 0:
                raise SystemExit(f"demo: the order service failed: {placed.stderr.strip()}")
            print("  " + placed.stdout.strip())

        _wait_for_read_model(dsns["shipping"], services, workdir)

        say("events per topic (decoded with cdc.consume)")
        _events(bootstrap)
        say("the shipping read model (its own database, kept by cdc sink postgres)")
        with psycopg.connect(dsns["shipping"]) as conn:
            rows = conn.execute(READ_MODEL).fetchall()
        print(f"  {'order':<6}{'customer':<10}{'status':<8}{'lines':<7}{'total':<9}stock")
        for order, customer, status, lines, total, stock in rows:
            print(f"  {order:<6}{customer:<10}{status:<8}{lines:<7}{total!s:<9}{stock}")
        with psycopg.connect(dsns["inventory"]) as conn:
            stock = conn.execute("SELECT sku, on_hand, reserved FROM stock ORDER BY sku").fetchall()
        print(
            "  inventory: "
            + ", ".join(f"{sku} {reserved} of {on_hand} reserved" for sku, on_hand, reserved in stock)
        )
        say("lag")
        _lag(env, dsns, connectors)
    finally:
        say("stopping everything")
        for proc in services:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in services:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if services:
            print(f"  stopped the inventory service and the shipping sink ({len(services)} processes)")
        for name in connectors:
            stopped = run(["stop", "--name", name, "--timeout", "60"], env, check=False)
            print("  " + (stopped.stdout or stopped.stderr).strip())
        dev.down(dev_dir)
        print("done: no server or connector left running")


def _wait_for_read_model(dsn: str, services: list[subprocess.Popen[bytes]], workdir: Path) -> None:
    """Until the read model has every order with the inventory's answer (a minute at most)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for proc, name in zip(services, ("inventory", "shipping"), strict=True):
            if proc.poll() is not None:
                log = (workdir / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise SystemExit(f"demo: the {name} process ended: {' | '.join(log)}")
        with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(r.status), count(*) FILTER (WHERE o.status = 'paid')"
                " FROM orders o LEFT JOIN reservations r ON r.order_id = o.id"
            ).fetchone()
            if row == (3, 1):
                return
        time.sleep(0.2)
    raise SystemExit("demo: the read model did not fill within 90 s: see the logs in " + str(workdir))


TOPICS = [
    "shop.public.orders",
    "shop.public.order_lines",
    "shop.outbox.order",
    "shop.transaction",
    "inventory.public.reservations",
    "inventory.outbox.inventory",
    "inventory.transaction",
]


def _events(bootstrap: str) -> None:
    """How many events each topic holds, by op, and the events the outbox router routed."""
    from cdc.consume import ChangeConsumer  # noqa: PLC0415

    ops: dict[str, Counter[str]] = {t: Counter() for t in TOPICS}
    events: list[str] = []
    with ChangeConsumer(TOPICS, bootstrap, from_beginning=True, plain_text=True) as consumer:
        for record in consumer.records(idle_timeout=1.5):
            value = record.value
            headers = dict(record.headers)
            if ".outbox." in record.topic and "type" in headers:
                ops[record.topic][headers["type"].decode()] += 1
                events.append(f"  {record.topic:<30} {headers['type'].decode():<14} order {record.key}")
                continue
            if record.error or not isinstance(value, dict):
                ops[record.topic]["tombstone" if value is None else "other"] += 1
                continue
            ops[record.topic][value.get("op") or value.get("status") or "?"] += 1
    for topic, counts in ops.items():
        detail = ", ".join(f"{op} {n}" for op, n in sorted(counts.items()))
        print(f"  {topic:<30} {sum(counts.values()):>3} records ({detail})")
    print("  the events, as the outbox router routed them (key: the order; id and type in headers):")
    print("\n".join(events))


def _lag(env: dict[str, str], dsns: dict[str, str], connectors: list[str]) -> None:
    for name in connectors:
        info = orjson.loads(run(["status", "--name", name, "--json"], env, check=False).stdout or b"{}")
        print(
            f"  connector {name:<10} {info.get('state')}, {info.get('events_total', 0)} events, "
            f"lag {info.get('lag_bytes')} bytes, {info.get('lag_seconds') or 0:.1f} s"
        )
    for name in ("inventory", "shipping"):
        with psycopg.connect(dsns[name]) as conn:
            rows = conn.execute(
                "SELECT count(*), max(extract(epoch FROM applied_at - coalesce(commit_ts, "
                "to_timestamp(record_ts / 1000.0)))), "
                "max(extract(epoch FROM now() - applied_at)) FROM cdc_sink_positions"
            ).fetchone()
        assert rows is not None
        partitions, delay, idle = rows
        print(
            f"  {name + ' sink':<20} {partitions} partitions applied, the last change "
            f"{delay or 0:.2f} s after its commit (or its record), idle for {idle or 0:.1f} s"
        )


if __name__ == "__main__":
    main()
