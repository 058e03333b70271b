"""Fixtures of the chaos cases: the seed, a private cluster to restart, brokers to break.

The brokers are those of `tests.fix_servers` (Apache Kafka; Tansu for the
``tansu_subset`` cases or with ``CDC_TEST_BROKER=tansu``).

Randomness is seeded: ``CDC_CHAOS_SEED`` replays a run (the header of
``pytest tests/chaos`` and every failing case print it); each case derives
its own seed from it and its name, so one case replays alone with ``-k``.
``CDC_CHAOS_ROUNDS`` (default 2) is how many times each fault strikes, at
random points of the stream.
"""

from __future__ import annotations

import os
import secrets
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cdc.devservers import KafkaUnavailable, PostgresServer
from tests.chaos.harness import LinkUnavailable, Shaped, create_shaped
from tests.chaos.workload import random_seed
from tests.fix_servers import EXTERNAL

SESSION_SEED = int(os.environ.get("CDC_CHAOS_SEED") or random_seed())
ROUNDS = int(os.environ.get("CDC_CHAOS_ROUNDS") or 2)


def pytest_report_header() -> str:
    return (
        f"chaos: seed {SESSION_SEED} (replay with CDC_CHAOS_SEED={SESSION_SEED}), {ROUNDS} rounds per fault"
    )


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    """This case's seed, printed (pytest shows it with a failure's captured output)."""
    seed = SESSION_SEED ^ zlib.crc32(request.node.name.encode())
    print(f"chaos seed {seed} for {request.node.name}: replay with CDC_CHAOS_SEED={SESSION_SEED}")
    return seed


@pytest.fixture(scope="session")
def chaos_pg(make_server: Callable[[dict[str, str]], PostgresServer]) -> PostgresServer:
    """A cluster of the newest version for the chaos cases alone: they restart it."""
    return make_server({})


@pytest.fixture
def shaped_broker(broker_kind: str, tmp_path: Path) -> Iterator[Shaped]:
    """A broker of this kind behind a veth pair whose traffic a case may slow down and drop."""
    if broker_kind == EXTERNAL:
        pytest.skip("needs a broker process behind a link of its own; CDC_TEST_BOOTSTRAP_SERVERS is external")
    try:
        broker = create_shaped(broker_kind, tmp_path / "broker")
    except LinkUnavailable as exc:
        pytest.skip(f"no shaped link on this machine ({exc}); the paused-broker case covers a hung broker")
    except KafkaUnavailable as exc:
        pytest.skip(f"no Apache Kafka on this machine: {exc}")
    try:
        broker.start()
    except BaseException:
        broker.destroy()
        raise
    yield broker
    broker.destroy()


@pytest.fixture
def chaos_prefix() -> str:
    return "x" + secrets.token_hex(4)
