"""Peak memory of the connector under the two loads that could grow it without bound.

    .venv/bin/python -m tests.chaos.memory [--rows 1000000] [--outage-seconds 60] [--max-buffer-mb 64]

1. One transaction of ``--rows`` rows: pgoutput sends it only after its
   commit, all at once; the connector must stream it through a bounded
   producer buffer, not hold it.
2. The broker stopped for ``--outage-seconds`` while writes go on: the
   producer buffer fills, reading the slot pauses (WAL waits in Postgres,
   not in the connector), and once the broker is back everything after the
   last confirmed position arrives.

The connector is a real `cdc start` process with the default producer
settings; its resident set (``VmRSS``, sampled every 50 ms, and the kernel's
``VmHWM`` peak) is printed per phase, and each run ends with the verifier.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cdc.devservers import Broker, PostgresServer, find_pg_installs
from cdc.kafka import resolve_producer_kind
from cdc.lsn import parse_lsn
from tests.chaos.verify import Report, decoder, read_all, verify
from tests.chaos.workload import Workload, create_schema, published_tables, random_seed
from tests.fix_servers import new_db
from tests.support import ConnectorProcess, RssSampler, current_wal, rss_kb, slot_confirmed, wait_until


@dataclass(slots=True)
class Phase:
    name: str
    rss_before_mb: float
    peak_mb: float
    seconds: float
    detail: str


def mb(kb: int) -> float:
    return round(kb / 1024, 1)


def large_transaction(
    server: PostgresServer, broker: Broker, rows: int, buffer_mb: int, work: Path, producer: str, format: str
) -> tuple[Phase, Report]:
    db = new_db(server)
    create_schema(db.dsn)
    workload = Workload(db.dsn, random_seed())
    connector = ConnectorProcess(
        db.dsn, broker.bootstrap_servers, "mem1", "m" + secrets.token_hex(3), work / "s1", published_tables(),
        extra=["--max-buffer-mb", str(buffer_mb)], producer=producer, format=format,
    )  # fmt: skip
    connector.start()
    try:
        for _ in range(20):
            workload.step()  # warm: every table's first events, topics created
        wait_until(lambda: connector.caught_up(current_wal(db.dsn)), 60, "warm-up")
        before = rss_kb(connector.pid)[0]
        began = time.monotonic()
        with RssSampler(connector.pid) as sampler:
            txn = workload.large_insert(rows)
            assert txn is not None
            committed = time.monotonic()
            target = current_wal(db.dsn)
            wait_until(
                lambda: connector.caught_up(target), 1800, f"{rows} rows to be confirmed", interval=0.5
            )
        streamed = time.monotonic() - committed
        peak = max(sampler.peak_kb, rss_kb(connector.pid)[1])
        connector.stop()
    finally:
        connector.cleanup()
        workload.close()
    decode = decoder(format, broker.bootstrap_servers, connector.prefix)
    report = verify(read_all(broker.bootstrap_servers, connector.prefix), workload.ledger, decode)
    phase = Phase(
        f"one transaction of {rows:,} rows", mb(before), mb(peak), time.monotonic() - began,
        f"streamed in {streamed:.0f} s after commit ({rows / streamed:,.0f} events/s)",
    )  # fmt: skip
    db.drop()
    return phase, report


def broker_outage(
    server: PostgresServer,
    broker: Broker,
    seconds: float,
    buffer_mb: int,
    work: Path,
    producer: str,
    format: str,
) -> tuple[list[Phase], Report]:
    db = new_db(server)
    create_schema(db.dsn)
    workload = Workload(db.dsn, random_seed(), rate=50)
    connector = ConnectorProcess(
        db.dsn, broker.bootstrap_servers, "mem2", "m" + secrets.token_hex(3), work / "s2", published_tables(),
        extra=["--max-buffer-mb", str(buffer_mb)], producer=producer, format=format,
    )  # fmt: skip
    connector.start()
    bulk_stop = threading.Event()

    def bulk_writes() -> None:  # 5,000 rows a second besides the small transactions
        while not bulk_stop.wait(0.5):
            workload.large_insert(2500)

    bulk = threading.Thread(target=bulk_writes, name="bulk", daemon=True)
    phases: list[Phase] = []
    try:
        workload.start()
        bulk.start()
        time.sleep(5)  # steady state before the outage
        before = rss_kb(connector.pid)[0]
        began = time.monotonic()
        with RssSampler(connector.pid) as during:
            broker.stop()
            time.sleep(0.5)  # a status interval: received_lsn now covers all the old broker acknowledged
            horizon_text = str(connector.status().get("received_lsn") or "0/0")
            time.sleep(max(0.0, seconds - 0.5))  # the outage is the load
            waiting = current_wal(db.dsn) - slot_confirmed(connector.dsn, connector.slot)
        phases.append(Phase(
            f"broker stopped {seconds:.0f} s, writes go on", mb(before), mb(during.peak_kb),
            time.monotonic() - began, f"{waiting / 2**20:,.0f} MiB of WAL waiting in Postgres",
        ))  # fmt: skip
        began = time.monotonic()
        back = rss_kb(connector.pid)[0]
        with RssSampler(connector.pid) as after:
            broker.start()
            bulk_stop.set()
            bulk.join(60)
            workload.halt()
            target = current_wal(db.dsn)
            wait_until(lambda: connector.caught_up(target), 1800, "the connector to catch up", interval=0.5)
        hwm = mb(rss_kb(connector.pid)[1])
        phases.append(Phase(
            "broker back, catching up", mb(back), mb(after.peak_kb),
            time.monotonic() - began, f"peak over the whole run (VmHWM) {hwm} MiB",
        ))  # fmt: skip
        connector.stop()
    finally:
        bulk_stop.set()
        connector.cleanup()
        workload.close()
    decode = decoder(format, broker.bootstrap_servers, connector.prefix)
    report = verify(
        read_all(broker.bootstrap_servers, connector.prefix), workload.ledger, decode,
        horizon=parse_lsn(horizon_text),
    )  # fmt: skip
    db.drop()
    return phases, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--outage-seconds", type=float, default=60)
    parser.add_argument("--max-buffer-mb", type=int, default=64)
    parser.add_argument("--only", choices=["large", "outage"], default=None)
    parser.add_argument("--producer", choices=["auto", "kafka-python", "confluent"], default="auto")
    parser.add_argument("--format", choices=["avro", "json"], default="avro")
    args = parser.parse_args(argv)
    producer = resolve_producer_kind(args.producer)
    work = Path(tempfile.mkdtemp(prefix="cdc-memory-"))
    server = PostgresServer.create(find_pg_installs()[0])
    server.start()
    broker = Broker.create(work / "broker")
    broker.start()
    phases: list[Phase] = []
    reports: list[tuple[str, Report]] = []
    try:
        if args.only in (None, "large"):
            phase, report = large_transaction(
                server, broker, args.rows, args.max_buffer_mb, work, producer, args.format
            )
            phases.append(phase)
            reports.append((phase.name, report))
        if args.only in (None, "outage"):
            outage, report = broker_outage(
                server, broker, args.outage_seconds, args.max_buffer_mb, work, producer, args.format
            )
            phases += outage
            reports.append((outage[0].name, report))
    finally:
        broker.destroy()
        server.destroy()
    flags = f"--producer {producer} --format {args.format} --max-buffer-mb {args.max_buffer_mb}"
    print(f"\nconnector memory: {flags}\n")
    print(f"| {'phase':<40} | {'RSS before':>10} | {'peak RSS':>9} | {'seconds':>7} | detail")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 11}|{'-' * 9}|{'-' * 40}")
    for p in phases:
        print(
            f"| {p.name:<40} | {p.rss_before_mb:>7} MiB | {p.peak_mb:>6} MiB | {p.seconds:>7.0f} | {p.detail}"
        )
    print()
    ok = True
    for name, report in reports:
        print(f"{name}: {report.summary()}")
        ok = ok and report.ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
