"""Micro-benchmark of shaping, no I/O: what a transform or a mask costs per event in CPU time.

``python -m bench.shaping [--rows N]`` builds N change events of the benchmark's
six-column table (bigint key, text, numeric, timestamptz, boolean, int) and
times, in CPU seconds of this process (so that other work on a shared
machine does not count), the Avro encoding the plain path does per event,
then `Shaper.records` with a no-op transform, a masking transform (HMAC of a
text column in Python) and ``--mask-columns`` on the same column. Each is
timed several times, interleaved; the medians are printed as microseconds per
event and as the cost over the plain encoding. `shaping_costs` returns them
for ``make bench``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from cdc.avro import AvroSerializer
from cdc.change import ChangeEvent
from cdc.config import Settings, TableColumns
from cdc.events import SourceInfo, Table, TableColumn
from cdc.pgoutput import ReplicaIdentity
from cdc.pgtypes import column_type
from cdc.shaping.shaper import Shaper

TABLE = Table(
    16384, "public", "bench_rows", ReplicaIdentity.DEFAULT,
    [
        TableColumn("id", column_type(20), True), TableColumn("name", column_type(25), False),
        TableColumn("amount", column_type(1700, (12 << 16 | 2) + 4), False),
        TableColumn("created_at", column_type(1184), False), TableColumn("active", column_type(16), False),
        TableColumn("qty", column_type(23), False),
    ],
)  # fmt: skip
TOPIC = "bench.public.bench_rows"
SOURCE = SourceInfo("bench", "postgres")


def events(rows: int) -> list[ChangeEvent]:
    return [
        ChangeEvent(
            "c",
            TABLE,
            None,
            [i, f"name {i}", Decimal(i) * Decimal("1.25"), 1_700_000_000_000_000 + i, i % 2 == 0, i % 100],
            1000 + i,
            1000,
            7,
            1_700_000_000_000,
            i + 1,
            i + 1,
            "7:1000",
        )
        for i in range(rows)
    ]


def _records(shaper: Shaper, event: ChangeEvent) -> Any:
    return shaper.records(event, TOPIC)


def _timed(run: Callable[[ChangeEvent], Any], batch: list[ChangeEvent]) -> float:
    """CPU microseconds per event of ``run`` over ``batch``."""
    gc.collect()
    started = time.process_time()
    for event in batch:
        run(event)
    return (time.process_time() - started) / len(batch) * 1e6


def shaping_costs(rows: int = 50_000, repeats: int = 5) -> dict[str, float]:
    """{case: CPU microseconds per event}, medians of ``repeats`` interleaved runs."""
    batch = events(rows)
    with tempfile.TemporaryDirectory(prefix="cdc-bench-shaping-") as tmp:
        salt = Path(tmp) / "salt"
        salt.write_text("the benchmark's mask salt, 32 bytes\n")
        plain = AvroSerializer("bench", SOURCE)
        shapers = {
            "noop_transform": Settings(topic_prefix="bench", transforms=["bench.transforms:nothing"]),
            "masking_transform": Settings(topic_prefix="bench", transforms=["bench.transforms:mask_name"]),
            "mask_columns": Settings(
                topic_prefix="bench",
                mask_columns=TableColumns({"public.bench_rows": ["name"]}),
                mask_salt_file=str(salt),
            ),
        }
        runs: dict[str, Callable[[ChangeEvent], Any]] = {"plain": plain.encode}
        for name, settings in shapers.items():
            shaper = Shaper(settings, AvroSerializer("bench", SOURCE), SOURCE)
            runs[name] = functools.partial(_records, shaper)
        for run in runs.values():  # warm up: schemas registered, codecs built
            _timed(run, batch[:1000])
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                samples[name].append(_timed(run, batch))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    costs = shaping_costs(args.rows)
    plain = costs["plain"]
    print(f"plain Avro encoding: {plain:.2f} us/event (CPU)")
    for name, cost in costs.items():
        if name != "plain":
            print(f"{name}: {cost:.2f} us/event, +{cost - plain:.2f} over the plain encoding")


if __name__ == "__main__":
    main()
