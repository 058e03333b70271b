"""`make demo` runs end to end and leaves nothing running."""

from __future__ import annotations

import subprocess
import sys

import pytest

# the demo starts its own Postgres and broker (no fixture does it for it)
pytestmark = pytest.mark.servers


def demo_processes() -> set[str]:
    found = subprocess.run(
        ["pgrep", "-f", "cdc-demo-|cdc-dev-pg-"], capture_output=True, text=True, check=False
    )
    return set(found.stdout.split())


def test_demo_runs_and_cleans_up() -> None:
    before = demo_processes()  # other checkouts on this machine may run their own demo
    done = subprocess.run(
        [sys.executable, "-m", "cdc.demo"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "shop.public.orders       op=c" in out and "shop.messages            op=m" in out
    assert "tombstone" in out and "stopped shop" in out and "done: no server" in out
    assert demo_processes() - before == set(), "the demo left processes behind"
