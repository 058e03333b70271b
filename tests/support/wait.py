"""Waiting for a condition with a timeout, never a fixed sleep.

Pure Python (no pytest), so that the test cases, ``make soak`` and the
benchmark share it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not come true in time (an `AssertionError`, so a test reports it as a failure)."""


def wait_until(
    condition: Callable[[], T | None], timeout: float = 30.0, message: str = "", interval: float = 0.05
) -> T:
    """Call ``condition`` every ``interval`` seconds until it returns something truthy, and return that.

    Raises `WaitTimeout` naming ``message`` (or the condition) after ``timeout``
    seconds; any exception ``condition`` raises (say, "the connector exited")
    ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            what = message or getattr(condition, "__qualname__", repr(condition))
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
