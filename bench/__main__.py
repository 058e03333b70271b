"""`make bench`: every figure of the benchmark issue from one run, as a table and as JSON.

Starts its own Postgres (the newest build found) and Tansu, then measures,
for the same workload (a six-column table of mixed types):

- the limit: pg_recvlogical (pgoutput, same publication) to /dev/null;
- the connector end to end, events acknowledged per second from the first
  event read to the last acknowledgement, for one 200k-row transaction and
  for 10-row transactions, with both producers; and with confluent-kafka, in
  the same runs, the Schema Registry wire format and ``--compat debezium``
  (JSON, and Avro through the registry) next to the native Avro (a registry,
  the tests' Apicurio peer, is started when Java is there);
- commit-to-ack latency p50/p99 at a steady 1,000 transactions/s, and the
  highest steady rate whose p99 stays under 50 ms;
- RSS: peak over the runs, and during a 1M-row transaction (with the time
  from its COMMIT to its last record acknowledged);
- seconds from `cdc start` to the first event acknowledged;
- the snapshot rate of a 1M-row table next to a bare COPY of it
  (bench/snapshot.py), and the decoder micro-benchmark (bench/decoder.py);
- seconds from `cdc start --snapshot initial` to streaming for 300 and for
  10,000 tables of 20 rows (bench/many_tables.py);
- what shaping costs: the one-transaction run with a no-op transform, a
  masking transform (HMAC of one column, in Python) and ``--mask-columns``,
  confluent producer, as events/s and microseconds per event over the plain run.

Throughput and latency figures are medians of ``--runs`` runs (3). Results go
to ``bench/results/latest.json`` (and a timestamped copy), and a full run also
to ``bench/committed.json``: commit it, and the next run prints its figures
beside the new ones so a regression shows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

import cdc
from bench import many_tables, shaping, snapshot, stream
from bench.common import median, servers
from bench.stream import FORMATS, format_flags, schema_registry
from tests.support.connector import ConnectorExited
from tests.support.wait import WaitTimeout

RESULTS = Path(__file__).resolve().parent / "results"
PRODUCERS = ("confluent", "kafka-python")
DELIVERIES = ("at-least-once", "exactly-once")

WORKLOADS = (("one_txn", "one {rows}-row transaction"), ("small_txns", "10-row transactions"))
#: the formats beside the native Avro, measured with confluent-kafka: key -> label
FORMAT_LABELS = {
    "registry": "Avro, Schema Registry wire format",
    "debezium_json": "--compat debezium, JSON",
    "debezium_avro": "--compat debezium, Avro (registry)",
}

#: the performance issue's targets: (figure key, comparison, threshold, text)
TARGETS: list[tuple[str, str, float, str]] = [
    ("stream_one_txn_confluent_strict_ratio", ">=", 0.5, "one transaction >= 0.5 of pg_recvlogical"),
    ("stream_small_txns_confluent_strict_ratio", ">=", 0.7, "10-row transactions >= 0.7 of pg_recvlogical"),
    ("snapshot_rows_per_s", ">=", 300_000, "initial snapshot >= 300,000 rows/s"),
    ("latency_p99_ms_confluent", "<", 10, "p99 < 10 ms at 1,000 txn/s"),
    ("peak_rss_mb", "<=", 150, "peak RSS <= 150 MB in every phase"),
    ("many_tables_300_s", "<=", 3, "300 small tables streaming within 3 s of start"),
    ("many_tables_10000_s", "<=", 60, "10,000 small tables streaming within a minute"),
    ("start_to_first_event_s", "<", 1.0, "first event < 1 s after start"),
    ("kafka_small_txns_exactly_once_vs_at_least_once", ">=", 0.8, "exactly-once within 20% of at-least-once"),
]

#: where `make bench` keeps its figures in the repository: the table shows the committed run's
#: figure next to each new one, so a regression is visible
COMMITTED = Path(__file__).resolve().parent / "committed.json"


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average": os.getloadavg(),
        "build": cdc.build(),  # `make bench` measures the compiled build (1.1-1.35x the pure one)
    }


def optional(module: str, function: str) -> Callable[..., float] | None:
    """A figure from a sibling benchmark module, if it exists in this checkout."""
    try:
        found: Callable[..., float] = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError):
        return None
    return found


def run(runs: int, rows: int, big_rows: int, quick: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {"rows": rows}
    samples: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)
        print(f"  {key}: {value:,.2f}", flush=True)

    peak_rss: list[float] = []
    with (
        servers() as s,
        tempfile.TemporaryDirectory(prefix="cdc-bench-") as tmp,
        schema_registry() as registry_url,
    ):
        state = Path(tmp)
        for i in range(runs):
            print(f"run {i + 1}/{runs}", flush=True)
            for small in (False, True):
                workload = "small_txns" if small else "one_txn"
                whole, streaming = stream.limit_rate(s, rows, small)
                add(f"limit_{workload}_rows_per_s", whole)
                add(f"limit_{workload}_streaming_rows_per_s", streaming)
                for producer in PRODUCERS:
                    result = stream.connector_rate(s, state, rows, small, producer, "avro")
                    add(f"stream_{workload}_{producer}_events_per_s", result["events_per_s"])
                    peak_rss.append(result["peak_rss_mb"])
                native = samples[f"stream_{workload}_confluent_events_per_s"][-1]
                for name in FORMATS:
                    if registry_url is None and name != "debezium_json":
                        continue  # no Java: no registry
                    fmt, extra = format_flags(name, registry_url or "")
                    result = stream.connector_rate(s, state, rows, small, "confluent", fmt, extra)
                    add(f"stream_{workload}_{name}_events_per_s", result["events_per_s"])
                    # against this run's native: the machine's load drifts less within a run
                    add(f"stream_{workload}_{name}_vs_native", result["events_per_s"] / native)
                    peak_rss.append(result["peak_rss_mb"])
                if not small:  # shaping, next to the plain run of the same workload
                    for kind in stream.SHAPING:
                        flags = stream.shaping_args(kind, state)
                        result = stream.connector_rate(s, state, rows, small, "confluent", "avro", flags)
                        add(f"stream_one_txn_confluent_{kind}_events_per_s", result["events_per_s"])
            for producer in PRODUCERS:
                lat = stream.latency(s, state, producer, "avro", seconds=4 if quick else 8)
                add(f"latency_p50_ms_{producer}", lat["p50_ms"] or 0.0)
                add(f"latency_p99_ms_{producer}", lat["p99_ms"] or 0.0)
                add(f"latency_txn_per_s_{producer}", lat["txn_per_s"])
            add("start_to_first_event_s", stream.start_to_first_event(s, state, "auto", "avro"))
        figures.update(highest_rate(s, state, seconds=3 if quick else 6))
        for producer in PRODUCERS:
            big = stream.big_transaction_rss(s, state, producer, "avro", rows=big_rows)
            figures[f"big_txn_rows_{producer}"] = big["rows"]
            figures[f"big_txn_max_rss_mb_{producer}"] = big["max_rss_mb"]
            figures[f"big_txn_idle_rss_mb_{producer}"] = big["idle_rss_mb"]
            figures[f"big_txn_buffered_mb_{producer}"] = big["buffered_mb"]
            figures[f"big_txn_commit_to_last_ack_s_{producer}"] = big["commit_to_last_ack_s"]
            peak_rss.append(big["peak_rss_mb"])
            print(f"  big transaction ({producer}): {big}", flush=True)
    for key, values in samples.items():
        figures[key] = median(values)
    figures["peak_rss_mb"] = max(peak_rss)
    for workload in ("one_txn", "small_txns"):
        limit = figures[f"limit_{workload}_rows_per_s"]
        strict = figures[f"limit_{workload}_streaming_rows_per_s"]
        for producer in PRODUCERS:
            rate = figures[f"stream_{workload}_{producer}_events_per_s"]
            figures[f"stream_{workload}_{producer}_ratio"] = rate / limit
            figures[f"stream_{workload}_{producer}_strict_ratio"] = rate / strict
    plain = figures.get("stream_one_txn_confluent_events_per_s")
    for kind in stream.SHAPING:
        rate = figures.get(f"stream_one_txn_confluent_{kind}_events_per_s")
        if plain and rate:
            figures[f"{kind}_us_per_event"] = (1 / rate - 1 / plain) * 1e6
    figures.update(delivery_on_kafka(runs, rows))
    snapshots = [snapshot.snapshot_rate(big_rows) for _ in range(runs)]
    figures["snapshot_table_rows"] = big_rows
    figures["snapshot_rows_per_s"] = median([r.rows_per_second for r in snapshots])
    figures["snapshot_copy_rows_per_s"] = median([r.copy_rows_per_second for r in snapshots])
    figures["snapshot_vs_copy"] = median([r.ratio for r in snapshots])
    figures.update(many_tables_figures(runs, quick))
    decoder = optional("bench.decoder", "decoder_rows_per_second")
    if decoder is not None:
        figures["decoder_rows_per_s"] = decoder()
    for name, cost in shaping.shaping_costs(rows=20_000 if quick else 50_000).items():
        figures[f"shaping_cpu_us_{name}"] = cost
    return figures


def highest_rate(s: Any, state: Path, seconds: float) -> dict[str, Any]:
    """The highest steady rate (doubling from 1,000 txn/s) whose commit-to-ack p99 stays under 50 ms,
    default producer; also whether the load generator (one connection, one INSERT per transaction)
    rather than the connector was the limit."""
    best, generator_bound = 0.0, False
    rate = 1000
    while rate <= 64_000:
        lat = stream.latency(s, state, "auto", "avro", rate=rate, seconds=seconds)
        p99 = lat["p99_ms"] or 0.0
        print(f"  {rate:,} txn/s asked, {lat['txn_per_s']:,.0f} done: p99 {p99:.1f} ms", flush=True)
        if p99 >= 50:
            break
        best = lat["txn_per_s"]
        if lat["txn_per_s"] < rate * 0.9:
            generator_bound = True  # the load generator cannot go faster: the connector kept up
            break
        rate *= 2
    return {"p99_under_50ms_txn_per_s": best, "p99_under_50ms_generator_bound": generator_bound}


def many_tables_figures(runs: int, quick: bool) -> dict[str, Any]:
    """Seconds from `cdc start --snapshot initial` to streaming: 300 tables of 20 rows (median of
    ``runs``), and 10,000 such tables once (not with ``--quick``)."""
    figures: dict[str, Any] = {}
    with servers() as s, tempfile.TemporaryDirectory(prefix="cdc-bench-") as tmp:
        samples = []
        for _ in range(runs):
            samples.append(many_tables.seconds_to_streaming(s, Path(tmp), 300))
            print(f"  many_tables_300_s: {samples[-1]:.2f}", flush=True)
        figures["many_tables_300_s"] = median(samples)
        if not quick:
            try:
                # five times the target: a slower start is a miss whatever its figure
                seconds = many_tables.seconds_to_streaming(s, Path(tmp), 10_000, timeout=300)
                figures["many_tables_10000_s"] = seconds
                print(f"  many_tables_10000_s: {seconds:.2f}", flush=True)
            except (ConnectorExited, WaitTimeout) as exc:  # a finding, not a reason to lose the run's figures
                figures["many_tables_10000_error"] = str(exc)[-300:]
                print(f"  many_tables_10000_s: FAILED: {figures['many_tables_10000_error']}", flush=True)
    return figures


def delivery_on_kafka(runs: int, rows: int) -> dict[str, Any]:
    """At-least-once next to exactly-once (confluent, Avro), both on Apache Kafka (Tansu's
    transactions are not Kafka's), timed to the moment everything is confirmed."""
    from cdc.devservers import KafkaServer, KafkaUnavailable
    from cdc.errors import ServerError

    try:
        kafka = KafkaServer.create()
        kafka.start()
    except (KafkaUnavailable, ServerError) as exc:
        print(f"  delivery on Apache Kafka: not measured ({exc})", flush=True)
        return {}
    samples: dict[str, list[float]] = {}
    try:
        with servers() as s, tempfile.TemporaryDirectory(prefix="cdc-bench-") as tmp:
            for _ in range(runs):
                for small in (False, True):
                    workload = "small_txns" if small else "one_txn"
                    for delivery in DELIVERIES:
                        result = stream.connector_rate(
                            s, Path(tmp), rows, small, "confluent", "avro", ("--delivery", delivery),
                            kafka.bootstrap_servers, until_confirmed=True,
                        )  # fmt: skip
                        key = f"kafka_{workload}_{delivery.replace('-', '_')}_events_per_s"
                        samples.setdefault(key, []).append(result["events_per_s"])
                        print(f"  {key}: {result['events_per_s']:,.2f}", flush=True)
    finally:
        kafka.destroy()
    figures = {key: median(values) for key, values in samples.items()}
    for workload in ("one_txn", "small_txns"):
        alo = figures.get(f"kafka_{workload}_at_least_once_events_per_s")
        eos = figures.get(f"kafka_{workload}_exactly_once_events_per_s")
        if alo and eos:
            figures[f"kafka_{workload}_exactly_once_vs_at_least_once"] = eos / alo
    return figures


def table(figures: dict[str, Any], previous: dict[str, Any] | None = None) -> str:
    """The figures as a Markdown table; ``previous`` (the committed run's) in a column beside them."""
    previous = previous or {}

    def fmt(found: dict[str, Any], keys: tuple[str, ...], form: str) -> str:
        if not all(k in found for k in keys):
            return "n/a"
        return " / ".join(form.format(found[k]) for k in keys)

    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, keys: tuple[str, ...] | str, form: str = "{:,.0f}", note: str = "") -> None:
        keys = (keys,) if isinstance(keys, str) else keys
        rows.append((name, fmt(figures, keys, form), note, fmt(previous, keys, form) if previous else ""))

    def ratio(key: str) -> str:
        if key not in figures:
            return ""
        strict = key.replace("_ratio", "_strict_ratio")
        return f"{figures[key]:.2f} / {figures[strict]:.2f}" if strict in figures else f"{figures[key]:.2f}"

    rows_label = fmt(figures, ("rows",), "{:,.0f}")
    workloads = [(w, label.format(rows=rows_label)) for w, label in WORKLOADS]
    for workload, label in workloads:
        for how, key, mark in (("whole run", "", "1.00"), ("streaming", "_streaming", "    / 1.00")):
            row(f"pg_recvlogical, {label}, {how} (rows/s)", f"limit_{workload}{key}_rows_per_s", note=mark)
    for producer in PRODUCERS:
        for workload, label in workloads:
            key = f"stream_{workload}_{producer}"
            row(f"cdc ({producer}), {label} (events/s)", f"{key}_events_per_s", note=ratio(f"{key}_ratio"))
    for name, label in FORMAT_LABELS.items():
        for workload, wlabel in workloads:
            key = f"stream_{workload}_{name}"
            if f"{key}_events_per_s" in figures:
                versus = f"{figures[f'{key}_vs_native']:.2f} x native"
                row(f"cdc (confluent), {label}, {wlabel} (events/s)", f"{key}_events_per_s", note=versus)
    shaping_labels = {
        "noop_transform": "a no-op transform",
        "masking_transform": "a masking transform (HMAC of a column)",
        "mask_columns": "--mask-columns (HMAC of a column)",
    }
    for kind, label in shaping_labels.items():
        key = f"stream_one_txn_confluent_{kind}"
        if f"{key}_events_per_s" in figures:
            cost = fmt(figures, (f"{kind}_us_per_event",), "+{:.1f} us/event")
            row(f"cdc (confluent), one transaction, {label} (events/s)", f"{key}_events_per_s", note=cost)
    for producer in PRODUCERS:
        row(
            f"commit-to-ack p50 / p99 at 1,000 txn/s, {producer} (ms)",
            (f"latency_p50_ms_{producer}", f"latency_p99_ms_{producer}"),
            "{:.1f}",
        )
    for workload, label in workloads:
        for delivery in DELIVERIES:
            key = f"kafka_{workload}_{delivery.replace('-', '_')}"
            versus = f"kafka_{workload}_exactly_once_vs_at_least_once"
            note = f"{figures[versus]:.2f} of ALO" if delivery == "exactly-once" and versus in figures else ""
            row(f"cdc on Apache Kafka, {delivery}, {label} (events/s)", f"{key}_events_per_s", note=note)
    snapshot_rows = fmt(figures, ("snapshot_table_rows",), "{:,.0f}")
    copy_ratio = fmt(figures, ("snapshot_vs_copy",), "{:.2f} of COPY")
    row(f"snapshot of a {snapshot_rows}-row table (rows/s)", "snapshot_rows_per_s", note=copy_ratio)
    row(f"COPY of the same {snapshot_rows}-row table to nowhere (rows/s)", "snapshot_copy_rows_per_s")
    row("300 tables of 20 rows: cdc start to streaming (s)", "many_tables_300_s", "{:.2f}")
    row("10,000 tables of 20 rows: cdc start to streaming (s)", "many_tables_10000_s", "{:.1f}")
    row("peak RSS over all runs (MB)", "peak_rss_mb", "{:.0f}")
    for producer in PRODUCERS:
        big = fmt(figures, (f"big_txn_rows_{producer}",), "{:,.0f}")
        row(
            f"RSS during a {big}-row transaction, {producer}: during / idle (MB)",
            (f"big_txn_max_rss_mb_{producer}", f"big_txn_idle_rss_mb_{producer}"),
            "{:.0f}",
        )
        row(
            f"most the producer held unacknowledged meanwhile, {producer} (MB; the default --max-buffer-mb)",
            f"big_txn_buffered_mb_{producer}",
            "{:.0f}",
        )
        row(
            f"COMMIT of a {big}-row transaction to its last record acknowledged, {producer} (s)",
            f"big_txn_commit_to_last_ack_s_{producer}",
            "{:.1f}",
        )
    bound = " (load generator's limit)" if figures.get("p99_under_50ms_generator_bound") else ""
    row(f"highest rate with commit-to-ack p99 < 50 ms (txn/s){bound}", "p99_under_50ms_txn_per_s")
    row("cdc start to first event (s)", "start_to_first_event_s", "{:.2f}")
    row("decoder micro-benchmark, no I/O (rows/s)", "decoder_rows_per_s")
    row(
        "CPU per event, no I/O (us): Avro encoding / with a no-op transform / a masking transform / "
        "--mask-columns",
        tuple(
            f"shaping_cpu_us_{n}" for n in ("plain", "noop_transform", "masking_transform", "mask_columns")
        ),
        "{:.1f}",
    )
    width = max(len(r[0]) for r in rows)
    lines = [
        f"| {'figure':<{width}} | {'value':>16} | {'vs limit':>13} | {'committed run':>16} |",
        f"|{'-' * (width + 2)}|{'-' * 18}|{'-' * 15}|{'-' * 18}|",
    ]
    lines += [f"| {name:<{width}} | {value:>16} | {r:>13} | {p:>16} |" for name, value, r, p in rows]
    lines.append("")
    lines.append("vs limit: whole run / first byte on (bench/stream.py limit_rate); x native: the median")
    lines.append("of each run's ratio to that run's native Avro with confluent-kafka")
    lines.append("committed run: the figures of bench/committed.json in the last commit")
    lines.append("")
    for key, op, threshold, text in TARGETS:
        if key not in figures:
            error = figures.get(key.removesuffix("_s") + "_error")
            lines.append(f"target {text}: " + (f"NOT met (failed: {error})" if error else "not measured"))
            continue
        value = figures[key]
        met = value >= threshold if op == ">=" else value <= threshold if op == "<=" else value < threshold
        lines.append(f"target {text}: {'met' if met else 'NOT met'} ({value:,.2f})")
    return "\n".join(lines)


def committed_figures() -> dict[str, Any]:
    """The figures of bench/committed.json as the last commit holds it (the file on disk without git)."""
    try:
        found = subprocess.run(
            ["git", "show", "HEAD:bench/committed.json"],
            cwd=COMMITTED.parent, capture_output=True, check=True, timeout=30,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        found = COMMITTED.read_bytes() if COMMITTED.exists() else b"{}"
    figures: dict[str, Any] = orjson.loads(found).get("figures", {})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="1 run, smaller loads: checks the harness")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.rows, args.big_rows = 1, 20_000, 100_000
    started = time.monotonic()
    figures = run(args.runs, args.rows, args.big_rows, args.quick)
    report = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "runs": args.runs,
        "rows": args.rows,
        "seconds": round(time.monotonic() - started, 1),
        "figures": figures,
    }
    text = table(figures, committed_figures())
    print()
    print(text)
    where = report["machine"]
    print(f"\n{report['seconds']} s on {where['cores']} cores ({where['cpu']}), cdc build: {where['build']}")
    RESULTS.mkdir(exist_ok=True)
    payload = orjson.dumps(report, option=orjson.OPT_INDENT_2)
    (RESULTS / "latest.json").write_bytes(payload)
    (RESULTS / f"{report['when'].replace(':', '')}.json").write_bytes(payload)
    (RESULTS / "latest.md").write_text(text + "\n")
    if not args.quick:  # commit it to make it the run the next one is compared with
        COMMITTED.write_bytes(payload)


if __name__ == "__main__":
    main()
