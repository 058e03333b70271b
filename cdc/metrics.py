"""Prometheus metrics and the health probes, on ``--metrics-port``: /metrics, /healthz, /readyz.

Nothing here runs per row. The pipeline keeps its figures in one `Status`
(counts per table and op, per topic, lag, the slot's health); a custom
collector turns them into Prometheus metrics when scraped, on the HTTP
server's thread. The metrics (``cdc_`` prefix, base units, counters end in
``_total``):

- ``cdc_events_total{table,op}``, ``cdc_event_bytes_total{table,op}``: streamed
  change events and their encoded key + value bytes; ``cdc_records_total{topic}``
  every record this process produced (tombstones, side topics and schemas too);
  ``cdc_transactions_total``;
- ``cdc_snapshot_rows_total{table}`` (rows of initial and incremental snapshots
  in Kafka), ``cdc_snapshot_chunks_total{table}`` (initial snapshot chunks done)
  and ``cdc_snapshot_chunks{table}`` (planned);
- ``cdc_producer_queue_records``, ``cdc_producer_queue_bytes``,
  ``cdc_delivery_errors_total``, ``cdc_reconnects_total{cause}`` (postgres,
  kafka, slot_lost), ``cdc_session_restarts_total``, ``cdc_slot_recreations_total``
  (a lost slot replaced: a gap closed by reading the tables again);
- ``cdc_replication_lag_bytes{reference}``: the server's WAL end (``server``) or
  the last position received (``received``) minus the confirmed one;
  ``cdc_replication_lag_seconds`` (see `Status.lag_seconds`);
  ``cdc_commit_to_ack_seconds`` (histogram, one sample per transaction);
- ``cdc_slot_wal_status{cdc_slot_wal_status}`` (a state set),
  ``cdc_slot_safe_wal_size_bytes``, ``cdc_heartbeat_age_seconds``,
  ``cdc_heartbeat_query_errors_total``;
- ``cdc_state{cdc_state}``, ``cdc_info{name,slot,version}``, and the process's
  own (``process_resident_memory_bytes``, ...).

``/healthz`` answers 200 while the connector's main loop turns (it reported
within `LIVENESS_SECONDS`); ``/readyz`` answers 200 while it streams, while an
initial snapshot makes progress, and while a reconnect has lasted less than
``--ready-reconnect-seconds``; 503 otherwise, with the reason in one line.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector

from cdc.config import Settings
from cdc.errors import ConfigError
from cdc.status import LATENCY_BUCKETS_MS, Status

log = logging.getLogger(__name__)

#: /healthz fails when the main loop has not reported for this long (it reports every status
#: interval; the longest legitimate silences are a full producer buffer and a reconnect's wait).
LIVENESS_SECONDS: Final = 120.0

STATES: Final = ("starting", "snapshotting", "running", "reconnecting", "stopping", "stopped")
WAL_STATUSES: Final = ("reserved", "extended", "unreserved", "lost")


class StatusCollector(Collector):
    """`Status` as Prometheus metrics, read when scraped."""

    def __init__(self, status: Status, name: str, version: str) -> None:
        self.status = status
        self.name = name
        self.version = version
        # the snapshot's figures restart with each session: expose them as counters that never go back
        self._chunks_done: dict[str, int] = {}

    def collect(self) -> Iterable[Metric]:
        status = self.status
        now = time.time()
        info = InfoMetricFamily("cdc", "The connector.")
        info.add_metric([], {"name": self.name, "slot": status.slot, "version": self.version})
        yield info
        states = {state: state == status.state for state in STATES}
        states.setdefault(status.state, True)
        yield StateSetMetricFamily("cdc_state", "What the connector is doing.", states)

        events = CounterMetricFamily(
            "cdc_events", "Change events streamed, by table and op.", labels=["table", "op"]
        )
        sizes = CounterMetricFamily(
            "cdc_event_bytes", "Encoded key and value bytes of the streamed events.", labels=["table", "op"]
        )
        for (table, op), count in list(status.table_ops.items()):
            if count.events:
                events.add_metric([table, op], count.events)
                sizes.add_metric([table, op], count.bytes)
        yield events
        yield sizes
        records = CounterMetricFamily("cdc_records", "Records produced, by topic.", labels=["topic"])
        for topic, n in list(status.records_per_topic.items()):
            records.add_metric([topic], n)
        yield records
        yield CounterMetricFamily("cdc_transactions", "Transactions streamed.", value=status.transactions)

        rows = CounterMetricFamily(
            "cdc_snapshot_rows", "Rows of initial and incremental snapshots in Kafka.", labels=["table"]
        )
        for table, n in list(status.events_per_table.items()):
            rows.add_metric([table], n)
        yield rows
        done = CounterMetricFamily(
            "cdc_snapshot_chunks_done", "Chunks of the initial snapshot in Kafka.", labels=["table"]
        )
        planned = GaugeMetricFamily(
            "cdc_snapshot_chunks_planned", "Chunks of the initial snapshot planned.", labels=["table"]
        )
        for table, progress in list((status.snapshot.get("tables") or {}).items()):
            chunks_done = max(self._chunks_done.get(table, 0), int(progress.get("chunks_done", 0)))
            self._chunks_done[table] = chunks_done
            planned.add_metric([table], int(progress.get("chunks", 0)))
        for table, chunks_done in self._chunks_done.items():
            done.add_metric([table], chunks_done)
        yield done
        yield planned

        queued_records, queued_bytes = status.producer_queue
        yield GaugeMetricFamily(
            "cdc_producer_queue_records", "Records the producer holds unacknowledged.", value=queued_records
        )
        yield GaugeMetricFamily(
            "cdc_producer_queue_bytes",
            "Bytes the producer holds unacknowledged (confluent-kafka: estimated from the mean event size).",
            value=queued_bytes,
        )
        yield CounterMetricFamily(
            "cdc_delivery_errors", "Records Kafka did not acknowledge.", value=status.delivery_errors
        )
        reconnects = CounterMetricFamily("cdc_reconnects", "Reconnects, by cause.", labels=["cause"])
        for cause in ("postgres", "kafka", "slot_lost"):
            reconnects.add_metric([cause], status.reconnects.get(cause, 0))
        yield reconnects
        yield CounterMetricFamily(
            "cdc_session_restarts",
            "Sessions (connections to Postgres and Kafka) started after the first.",
            value=max(0, status.sessions - 1),
        )
        yield CounterMetricFamily(
            "cdc_slot_recreations",
            "Lost slots replaced, the gap closed by reading the tables again.",
            value=status.slot_recreations,
        )
        yield from _shaping(status)

        lag = GaugeMetricFamily(
            "cdc_replication_lag_bytes",
            "WAL not confirmed yet: from the server's WAL end, or from the last position received.",
            labels=["reference"],
        )
        if status.confirmed_lsn:
            lag.add_metric(["server"], max(0, status.wal_end - status.confirmed_lsn))
            lag.add_metric(["received"], max(0, status.received_lsn - status.confirmed_lsn))
        yield lag
        yield GaugeMetricFamily(
            "cdc_replication_lag_seconds",
            "Age of the oldest commit Kafka does not hold yet (0 when caught up).",
            value=status.lag_seconds(now),
        )
        yield _latency_histogram(status)

        wal = {value: value == status.slot_wal_status for value in WAL_STATUSES}
        if status.slot_wal_status:
            wal.setdefault(status.slot_wal_status, True)
        yield StateSetMetricFamily(
            "cdc_slot_wal_status", "The slot's wal_status (PostgreSQL 13+); all false when unknown.", wal
        )
        if status.slot_safe_wal_size is not None:
            yield GaugeMetricFamily(
                "cdc_slot_safe_wal_size_bytes",
                "WAL that can still be written before the slot is lost (max_slot_wal_keep_size).",
                value=status.slot_safe_wal_size,
            )
        if status.last_heartbeat_at:
            yield GaugeMetricFamily(
                "cdc_heartbeat_age_seconds",
                "Seconds since the last heartbeat.",
                value=max(0.0, now - status.last_heartbeat_at),
            )
        yield CounterMetricFamily(
            "cdc_heartbeat_query_errors",
            "--heartbeat-query runs the server refused.",
            value=status.heartbeat_query_errors,
        )


def _shaping(status: Status) -> Iterator[Metric]:
    """Tables captured, events transforms dropped, transform errors, dead letters (cdc.shaping)."""
    yield GaugeMetricFamily("cdc_captured_tables", "Tables captured.", value=len(status.tables))
    counts = dict(status.shaping)
    yield CounterMetricFamily(
        "cdc_events_filtered",
        "Events a transform dropped (confirmed as delivered).",
        value=counts.get("filtered", 0),
    )
    errors = CounterMetricFamily(
        "cdc_transform_errors",
        "Events a transform raised on, skipped or dead-lettered.",
        labels=["transform"],
    )
    letters = CounterMetricFamily(
        "cdc_dead_letters",
        "Records written to PREFIX.dead-letter, by stage (transform, encode, kafka).",
        labels=["stage"],
    )
    for name, n in counts.items():
        kind, _, what = name.partition(":")
        if kind == "transform_errors":
            errors.add_metric([what], n)
        elif kind == "dead_letters":
            letters.add_metric([what], n)
    yield errors
    yield letters


def _latency_histogram(status: Status) -> HistogramMetricFamily:
    latencies = status.latencies
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    counts = list(latencies.buckets)
    for bound, count in zip((*LATENCY_BUCKETS_MS, float("inf")), counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound / 1000), cumulative))
    return HistogramMetricFamily(
        "cdc_commit_to_ack_seconds",
        "From a transaction's commit in Postgres to Kafka's acknowledgement of its last event.",
        buckets=buckets,
        sum_value=latencies.sum / 1000,
    )


# -- the probes ---------------------------------------------------------------------------


def healthy(status: Status) -> tuple[bool, str]:
    """/healthz: the main loop turns (it reported within `LIVENESS_SECONDS`)."""
    silent = time.monotonic() - status.reported_at
    if silent > LIVENESS_SECONDS:
        return False, f"the connector has not reported for {silent:.0f} s ({status.state})"
    return True, f"alive ({status.state})"


class Readiness:
    """/readyz: streaming; snapshotting with progress; reconnecting, but not for longer than allowed."""

    def __init__(self, status: Status, reconnect_seconds: float) -> None:
        self.status = status
        self.reconnect_seconds = reconnect_seconds
        self.rows = -1
        self.rows_changed_at = time.time()

    def check(self) -> tuple[bool, str]:
        status = self.status
        now = time.time()
        state = status.state
        if state == "running":
            return True, "streaming"
        if state == "snapshotting":
            rows = sum(int(t.get("rows", 0)) for t in (status.snapshot.get("tables") or {}).values())
            if rows != self.rows:
                self.rows, self.rows_changed_at = rows, now
            quiet = now - max(self.rows_changed_at, status.state_since)
            if quiet <= self.reconnect_seconds:
                return True, f"snapshotting ({rows:,} rows)"
            return False, f"snapshotting without progress for {quiet:.0f} s"
        if state == "reconnecting":
            lasted = now - status.state_since
            if lasted <= self.reconnect_seconds:
                return True, f"reconnecting for {lasted:.0f} s"
            return False, f"reconnecting for {lasted:.0f} s: {status.last_error}"
        return False, state


# -- the server ---------------------------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


def application(status: Status, settings: Settings, version: str) -> Callable[..., Iterable[bytes]]:
    """The WSGI app: /metrics (and /), /healthz, /readyz."""
    registry = CollectorRegistry()
    registry.register(StatusCollector(status, settings.name, version))
    ProcessCollector(registry=registry)
    metrics = make_wsgi_app(registry)
    readiness = Readiness(status, settings.ready_reconnect_seconds)
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path in ("/healthz", "/readyz"):
            with lock:
                ok, reason = healthy(status) if path == "/healthz" else readiness.check()
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")]
            )
            return [f"{'ok' if ok else 'not ok'}: {reason}\n".encode()]
        if path in ("/", "/metrics"):
            with lock:
                return list(metrics(environ, start_response))
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return app


@contextlib.contextmanager
def serve(settings: Settings, status: Status, version: str = "") -> Iterator[tuple[str, int] | None]:
    """Serve the metrics and probes on ``--metrics-host``:``--metrics-port`` while inside; None when off.

    Raises `ConfigError` when the port cannot be had (before the connector does anything).
    """
    if not settings.metrics_port:
        yield None
        return
    host, port = settings.metrics_host, settings.metrics_port
    try:
        server = make_server(
            host,
            port,
            application(status, settings, version),
            server_class=_Server,
            handler_class=_QuietHandler,
        )
    except (OSError, socket.gaierror) as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; choose another --metrics-port "
            "or --metrics-host"
        ) from None
    thread = threading.Thread(target=server.serve_forever, name="cdc-metrics", daemon=True)
    thread.start()
    log.info("metrics on http://%s:%d/metrics (probes: /healthz, /readyz)", host, port)
    try:
        yield host, port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
