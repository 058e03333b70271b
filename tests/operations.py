"""Test helpers for the operators' side: scrape /metrics, ask the probes, look at slots."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.fix_servers import TestDb

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def probe(port: int, path: str) -> tuple[int, str]:
    """(HTTP status, body) of /healthz or /readyz."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def slot_row(db: TestDb, slot: str) -> dict[str, Any] | None:
    rows = db.execute(
        "SELECT slot_name, active, wal_status, confirmed_flush_lsn::text FROM pg_replication_slots "
        "WHERE slot_name = %s",
        (slot,),
    )
    if not rows:
        return None
    name, active, wal_status, confirmed = rows[0]
    return {"slot": name, "active": active, "wal_status": wal_status, "confirmed": confirmed}
