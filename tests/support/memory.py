"""The resident set of a process, from ``/proc``: now, its peak, and sampled over a stretch of time."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB: the resident set now and the kernel's record of its peak.

    Raises `OSError` when the process is gone.
    """
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key == "VmRSS":
            rss = int(rest.split()[0])
        elif key == "VmHWM":
            hwm = int(rest.split()[0])
    return rss, hwm


@dataclass
class RssSampler:
    """The largest VmRSS (``peak_kb``) and VmHWM (``hwm_kb``) of a process seen by `sample`.

    Call `sample` yourself, or use the sampler as a context manager: a thread
    then samples every ``interval`` seconds until the block ends. A process
    that is gone is not sampled (and not an error).
    """

    pid: int
    interval: float = 0.05
    peak_kb: int = 0
    hwm_kb: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        with contextlib.suppress(OSError):
            rss, hwm = rss_kb(self.pid)
            self.peak_kb = max(self.peak_kb, rss)
            self.hwm_kb = max(self.hwm_kb, hwm)
            self.samples += 1

    def __enter__(self) -> RssSampler:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.sample()

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
