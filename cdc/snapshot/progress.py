"""Progress of the initial snapshot: bars on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final

log = logging.getLogger(__name__)

#: Seconds between progress log lines when stderr is not a terminal.
LOG_INTERVAL: Final = 10.0

#: Up to this many tables, a bar each; with more, one bar for all of them and a bar per table
#: while it is read (a bar per table of 10,000 fills no terminal). Without a terminal, as many
#: tables being read get a log line each, the others a count.
BAR_PER_TABLE_UP_TO: Final = 10


class SnapshotProgress:
    """Bars on a terminal (rich): a bar per table, or with many tables one bar for all and one per
    table being read; without a terminal a summary line and a line per table being read every 10 s."""

    def __init__(self, tables: dict[str, tuple[int, int]], interactive: bool | None = None) -> None:
        """``tables``: name -> (rows already done, estimated total rows; 0 if unknown)."""
        self.started = time.monotonic()
        self.rows = {name: done for name, (done, _) in tables.items()}
        self.base = dict(self.rows)
        self.totals = {name: total for name, (_, total) in tables.items()}
        self.finished: set[str] = set()
        self.next_log = self.started + LOG_INTERVAL
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.bars: Any = None
        self.ids: dict[str, Any] = {}
        self.summary: Any = None  # the bar of all tables, with many
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []
        if self.interactive and tables:
            self._start_bars()

    def _start_bars(self) -> None:
        from rich.console import Console  # noqa: PLC0415 - only on a terminal
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: PLC0415

        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:>12,.0f} / ~{task.total:,.0f} rows"),
            TextColumn("{task.fields[rate]:>10} rows/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        if len(self.rows) > BAR_PER_TABLE_UP_TO:
            done, total = self._sums()
            self.summary = self.bars.add_task(
                self._summary_text(), total=total or None, completed=done, rate="-"
            )
        else:
            for name in self.rows:
                self._add_bar(name)
        self.bars.start()
        # log lines go through rich's stderr proxy, above the bars
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.__stderr__:
                self._handlers.append((handler, handler.setStream(sys.stderr)))

    def _add_bar(self, name: str) -> None:
        done = self.rows[name]
        total = max(self.totals[name], done) or None
        self.ids[name] = self.bars.add_task(name, total=total, completed=done, rate="-")

    def _sums(self) -> tuple[int, int]:
        """Rows read and estimated, over every table."""
        return sum(self.rows.values()), sum(max(self.totals[n], done) for n, done in self.rows.items())

    def _summary_text(self) -> str:
        return f"{len(self.finished):,} of {len(self.rows):,} tables"

    def _update_summary(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-3)
        done, total = self._sums()
        rate = (done - sum(self.base.values())) / elapsed
        self.bars.update(
            self.summary, description=self._summary_text(), completed=done, total=total, rate=f"{rate:,.0f}"
        )

    def advance(self, name: str, rows: int) -> None:
        self.rows[name] = self.rows.get(name, 0) + rows
        if self.bars is not None:
            if name not in self.ids:  # many tables: a bar from its first rows to its end
                self._add_bar(name)
            task = self.ids[name]
            self.bars.update(task, advance=rows, rate=f"{self._rate(name):,.0f}")
            total = self.bars.tasks[task].total
            if total is not None and self.rows[name] > total:
                self.bars.update(task, total=self.rows[name])
            if self.summary is not None:
                self._update_summary()
        elif time.monotonic() >= self.next_log:
            self.next_log = time.monotonic() + LOG_INTERVAL
            self._log_reading()

    def _log_reading(self) -> None:
        """With many tables, one summary line, then a line per table being read (rows came, not done),
        the first few only: a line for every unfinished table was 10,000 lines every 10 s."""
        if len(self.rows) > 1:
            rows, total = self._sums()
            log.info(
                "snapshot: %s of %s tables done, %s of ~%s rows",
                f"{len(self.finished):,}", f"{len(self.rows):,}", f"{rows:,}", f"{total:,}",
            )  # fmt: skip
        reading = [t for t, rows in self.rows.items() if t not in self.finished and rows > self.base[t]]
        for table in reading[:BAR_PER_TABLE_UP_TO]:
            self._log_line(table)
        if len(reading) > BAR_PER_TABLE_UP_TO:
            # a slow broker leaves thousands read and not yet acknowledged: 9,000 lines every 10 s
            log.info(
                "snapshot: %s more tables read, waiting for Kafka", f"{len(reading) - BAR_PER_TABLE_UP_TO:,}"
            )

    def _rate(self, name: str) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-3)
        return (self.rows[name] - self.base[name]) / elapsed

    def _log_line(self, name: str) -> None:
        rows, total, rate = self.rows[name], self.totals[name], self._rate(name)
        if total > rows:
            eta = f", ETA {(total - rows) / rate:.0f} s" if rate > 0 else ""
            log.info(
                "snapshot %s: %s of ~%s rows (%.0f%%), %s rows/s%s",
                name, f"{rows:,}", f"{total:,}", 100 * rows / total, f"{rate:,.0f}", eta,
            )  # fmt: skip
        else:
            log.info("snapshot %s: %s rows, %s rows/s", name, f"{rows:,}", f"{rate:,.0f}")

    def table_done(self, name: str, rows: int) -> None:
        self.finished.add(name)
        self.rows[name] = rows
        if self.bars is not None:
            if self.summary is None:
                self.bars.update(self.ids[name], completed=rows, total=rows)
            else:
                task = self.ids.pop(name, None)
                if task is not None:
                    self.bars.remove_task(task)
                self._update_summary()
        log.info("snapshot of %s done: %s rows", name, f"{rows:,}")

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            for handler, stream in self._handlers:
                handler.setStream(stream)
            self.bars = None
