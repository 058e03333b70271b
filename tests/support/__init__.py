"""What the tests, the chaos suite (and ``make soak``) and the benchmark share; no pytest in here.

- `tests.support.wait`: `wait_until`, `WaitTimeout`;
- `tests.support.memory`: `rss_kb`, `RssSampler`;
- `tests.support.positions`: `scalar`, `current_wal`, `slot_confirmed`, `slot_active_pid`;
- `tests.support.connector`: `cdc`, `error_line`, `child_env`, `ConnectorProcess`,
  `ConnectorExited`, `running`, `Running`, `FAST_FAILING_PRODUCER`, `OUTLIVING_PRODUCER`,
  `producer_config_args`.

The servers themselves (Postgres clusters, the broker) come from
`cdc.devservers`; their pytest fixtures from `tests.fix_servers`.
"""

from __future__ import annotations

from tests.support.connector import (
    FAST_FAILING_PRODUCER,
    OUTLIVING_PRODUCER,
    ConnectorExited,
    ConnectorProcess,
    Running,
    cdc,
    child_env,
    error_line,
    producer_config_args,
    running,
)
from tests.support.memory import RssSampler, rss_kb
from tests.support.positions import current_wal, scalar, slot_active_pid, slot_confirmed
from tests.support.wait import WaitTimeout, wait_until

__all__ = [
    "FAST_FAILING_PRODUCER",
    "OUTLIVING_PRODUCER",
    "ConnectorExited",
    "ConnectorProcess",
    "RssSampler",
    "Running",
    "WaitTimeout",
    "cdc",
    "child_env",
    "current_wal",
    "error_line",
    "producer_config_args",
    "rss_kb",
    "running",
    "scalar",
    "slot_active_pid",
    "slot_confirmed",
    "wait_until",
]
