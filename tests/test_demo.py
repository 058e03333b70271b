"""`make demo` runs the shop end to end and leaves nothing running."""

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
    # the order service's events went through its outbox table to the inventory service, whose
    # answers went out as outbox messages, both routed by the connectors; the read model has every
    # order with the inventory's answer
    assert "shop.outbox.order              OrderPlaced    order 3" in out
    assert "inventory.outbox.inventory     OutOfStock     order 2" in out
    assert "1     ada       paid    2      88.90    reserved" in out
    assert "2     grace     placed  1      378.00   out_of_stock" in out
    assert "stopped the inventory service and the shipping sink (2 processes)" in out
    assert "stopped shop" in out and "stopped inventory" in out and "done: no server" in out
    assert demo_processes() - before == set(), "the demo left processes behind"
