"""``make soak``: the chaos workload for N minutes, with a random fault every few seconds.

    .venv/bin/python -m tests.chaos.soak [--minutes 10] [--seed N] [--rate 100]
                                         [--faults kill9,broker_restart,...] [--every 8-25]
                                         [--broker kafka|tansu] [--delivery at-least-once|exactly-once]
                                         [--producer auto|kafka-python|confluent] [--format avro|json]

``CDC_SOAK_MINUTES``, ``CDC_CHAOS_SEED`` and ``CDC_TEST_BROKER`` set the
defaults of ``--minutes``, ``--seed`` and ``--broker``. It starts its own
Postgres (the newest found) and broker, Apache Kafka by default (in a network
namespace behind a shapeable link when the machine allows it, with a small
tmpfs as the state directory), writes rows for an initial snapshot,
runs a real `cdc start` process (killed -9 part-way through that snapshot,
then started again), writes the workload of `tests.chaos.workload` at
``--rate`` transactions a second, and strikes the faults of
`tests.chaos.faults.FAULTS` at random intervals, every kind once in a random
order, then again. After every kill -9 and before every broker restart it
checks the checkpoint invariant (everything the slot confirmed is in Kafka);
at the end it stops the workload, lets the connector catch up, stops it,
verifies every topic and prints a table. The exit status is 0 only without
any violation.

On Apache Kafka nothing may be missing: a broker restart keeps what it
acknowledged, so there is no loss horizon. With ``--delivery exactly-once``
the verifier reads committed records only and a duplicate is a violation;
the same run at at-least-once shows how many duplicates the faults made.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from cdc.devservers import PostgresServer, find_pg_installs
from tests.chaos import harness
from tests.chaos.faults import DELIVERIES, FAULTS, Chaos, new_scene, start_with_snapshot
from tests.chaos.harness import LinkUnavailable, StateDirUnavailable
from tests.chaos.verify import Report
from tests.chaos.workload import random_seed
from tests.fix_servers import new_db
from tests.support.brokers import BROKER_KINDS, KAFKA, BrokerProcess, create_broker

log = logging.getLogger("soak")


@contextlib.contextmanager
def servers(work: Path, kind: str, shaped: bool) -> Iterator[tuple[PostgresServer, BrokerProcess, str]]:
    """A cluster and a broker of ``kind``; the broker behind a shapeable link when possible.
    Yields a note."""
    server = PostgresServer.create(find_pg_installs()[0])
    server.start()
    broker: BrokerProcess
    note = ""
    try:
        try:
            if not shaped:
                raise LinkUnavailable("not asked for")
            broker = harness.create_shaped(kind, work / "broker")
        except LinkUnavailable as exc:
            note = f"no shaped link ({exc}): slow_link left out"
            broker = create_broker(kind, work / "broker")
        try:
            broker.start()
            yield server, broker, note
        finally:
            broker.destroy()
    finally:
        server.destroy()


@contextlib.contextmanager
def state_directory(work: Path) -> Iterator[tuple[Path, str]]:
    """A small tmpfs for the state (so that it can fill up), or a plain directory. Yields a note."""
    path = work / "state"
    try:
        with harness.small_filesystem(path, size_kb=1024):
            yield path, ""
    except StateDirUnavailable as exc:
        path.mkdir(parents=True, exist_ok=True)
        yield path, f"no small filesystem ({exc}): state_dir_full left out"


def recover(scene: Chaos) -> None:
    """After a fault that failed half-way: undo what it may have left, so the soak goes on."""
    broker = scene.broker
    broker.resume()
    link = harness.link_of(broker)
    if link is not None and link.shaped:
        link.unshape()
    if not broker.pid:
        broker.start()
    with contextlib.suppress(StateDirUnavailable):
        harness.set_immutable(scene.connector.instance_dir, False)
    (scene.connector.state_dir / "filler").unlink(missing_ok=True)
    if not scene.connector.alive():
        scene.connector.start()


def table(scene: Chaos, report: Report, minutes: float, seed: int, failures: list[str]) -> str:
    per_fault: dict[str, list[float]] = defaultdict(list)
    for fault in scene.faults:
        per_fault[fault.name].append(fault.seconds)
    large = sum(1 for t in scene.workload.ledger.committed if t.kind == "large")
    passed = sum(c.ok for c in scene.checkpoint_checks)
    connector = scene.connector
    broker = "Apache Kafka" if scene.durable else "Tansu"
    lines = [
        f"soak: {minutes:g} minutes, seed {seed} (replay: CDC_CHAOS_SEED={seed}), {broker}, --delivery "
        f"{scene.delivery} --producer {connector.producer} --format {connector.format}, "
        f"{scene.workload.transactions} small + {large} large transactions",
        "",
        "| fault | injected | mean s (fault + recovery) | max s |",
        "|---|---:|---:|---:|",
    ]
    missed = [f for f in scene.faults if not f.landed]
    for name, seconds in sorted(per_fault.items()):
        lines.append(f"| {name} | {len(seconds)} | {sum(seconds) / len(seconds):.1f} | {max(seconds):.1f} |")
    if missed:
        lines.append(
            f"| (of which missed their moment: {', '.join(f.name for f in missed)}) | {len(missed)} | | |"
        )
    lines += [
        f"| **all faults** | **{len(scene.faults)}** | | |",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| changes written (committed) | {report.changes_expected} |",
        f"| changes verified in Kafka | {report.changes_verified} |",
        f"| changes lost (missing in Kafka) | {report.changes_expected - report.changes_verified} |",
    ]
    if not scene.durable:
        lines.append(
            f"| of which lost by the broker itself (before the loss horizon at its restart) "
            f"| {report.lost_by_broker} |"
        )
    duplicates = (
        "duplicates (read_committed; exactly-once allows none)"
        if scene.exactly_once
        else "duplicates (each an exact repeat of its position)"
    )
    lines += [
        f"| {duplicates} | {report.duplicates} |",
        f"| rolled-back transactions, none in Kafka | {report.aborted_checked} |",
        f"| in-doubt commits resolved by the writer | {scene.workload.ledger.in_doubt_resolved} |",
        f"| checkpoint checks (all confirmed is in Kafka) | {passed}/{len(scene.checkpoint_checks)} passed |",
        f"| max lag, WAL not yet confirmed | {scene.max_lag_bytes / 2**20:.1f} MiB |",
        f"| max lag, commit to Kafka record | {report.max_lag_ms / 1000:.1f} s |",
        f"| records read | {report.records} |",
        f"| violations | {report.violation_count} |",
        f"| faults that failed their own checks | {len(failures)} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("CDC_SOAK_MINUTES") or 10))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("CDC_CHAOS_SEED") or random_seed()))
    parser.add_argument("--rate", type=float, default=100.0, help="small transactions per second")
    parser.add_argument("--faults", default="", help="comma-separated names (default: every one available)")
    parser.add_argument("--every", default="8-25", help="seconds between faults, MIN-MAX")
    parser.add_argument(
        "--check-every", type=int, default=1, metavar="N",
        help="check the checkpoint invariant at every N-th kill -9 / broker restart (a check reads every "
        "topic from the start, so it slows a long run down)",
    )  # fmt: skip
    parser.add_argument(
        "--large-rows", type=int, default=200_000, help="rows of the large transaction a kill -9 interrupts"
    )
    parser.add_argument("--no-shaped-link", action="store_true", help="do not build a network namespace")
    parser.add_argument(
        "--broker", choices=BROKER_KINDS, default=os.environ.get("CDC_TEST_BROKER") or KAFKA,
        help="Apache Kafka (durable: nothing may be lost) or Tansu (in memory: a loss horizon per restart)",
    )  # fmt: skip
    parser.add_argument("--delivery", choices=DELIVERIES, default=DELIVERIES[0])
    parser.add_argument("--producer", choices=["auto", "kafka-python", "confluent"], default="auto")
    parser.add_argument("--format", choices=["avro", "json"], default="avro")
    args = parser.parse_args(argv)
    # a kill (or Ctrl-C of a backgrounded run, which ignores SIGINT) still stops the servers it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    for noisy in ("kafka", "cdc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    low, high = (float(x) for x in args.every.split("-"))
    print(
        f"soak: {args.minutes:g} minutes, seed {args.seed} (replay: CDC_CHAOS_SEED={args.seed})", flush=True
    )

    work = Path(tempfile.mkdtemp(prefix="cdc-soak-"))
    failures: list[str] = []
    with (
        servers(work, args.broker, not args.no_shaped_link) as (server, broker, broker_note),
        state_directory(work) as (
            state,
            state_note,
        ),
    ):
        names = [n.strip() for n in args.faults.split(",") if n.strip()] or list(FAULTS)
        if broker_note and "slow_link" in names:
            names.remove("slow_link")
        if state_note and "state_dir_full" in names:
            names.remove("state_dir_full")
        for note in (broker_note, state_note):
            if note:
                print(f"soak: {note}", flush=True)
        unknown = sorted(set(names) - set(FAULTS))
        if unknown:
            parser.error(f"unknown faults {unknown}; choose from {sorted(FAULTS)}")
        db = new_db(server)
        scene = new_scene(
            server, db.dsn, broker, state, "soak" + secrets.token_hex(3), "soak", args.seed, args.rate,
            producer=args.producer, format=args.format, delivery=args.delivery,
        )  # fmt: skip
        scene.verify_checkpoints = True
        scene.checkpoint_every = max(1, args.check_every)
        scene.large_rows = args.large_rows  # 200,000: seconds of streaming even for librdkafka
        scene.connector.extra += ["--snapshot-workers", "1", "--snapshot-chunk-rows", "500"]
        try:
            # rows that exist before the connector: an initial snapshot reads them, killed part-way
            for _ in range(300):
                scene.workload.step()
            scene.workload.large_insert(60_000)
            record = start_with_snapshot(scene, kill_after_chunks=scene.rng.randint(3, 60), strict=False)
            if record is not None:
                log.info("%-32s %5.1f s  %s", record.name, record.seconds, record.detail)
            scene.sample_lag()
            deadline = time.monotonic() + args.minutes * 60
            order: list[str] = []  # every kind once, in random order, then again
            while True:
                pause = scene.rng.uniform(low, high)
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)  # the workload runs between faults: the interval is the load
                if scene.workload.error is not None:
                    raise scene.workload.error
                if not order:
                    order = scene.rng.sample(names, len(names))
                name = order.pop()
                try:
                    record = FAULTS[name](scene)
                    log.info("%-32s %5.1f s  %s", record.name, record.seconds, record.detail)
                except Exception as exc:
                    failures.append(f"{name}: {exc}")
                    log.error("%s failed: %s\n%s", name, exc, traceback.format_exc(limit=3))
                    recover(scene)
            remaining = deadline - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
            log.info("stopping the workload, waiting for the connector to catch up, verifying")
            report = scene.finish(timeout=600)
        finally:
            scene.workload.close()
            scene.connector.cleanup()
            scene.stop_sampling()
        print()
        print(table(scene, report, args.minutes, args.seed, failures))
        if failures:
            print("\nfaults that failed their own checks:\n  " + "\n  ".join(failures))
        if not report.ok:
            print("\n" + report.summary())
        print(f"\nconnector logs: {scene.connector.logs[0].parent}")
    return 0 if report.ok and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
