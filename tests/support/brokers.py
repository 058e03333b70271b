"""Which broker the tests, the chaos suite and ``make soak`` run on: Apache Kafka or Tansu.

Apache Kafka (`cdc.devservers.KafkaServer`) is the broker the claims rest on:
its data is on disk, so a restart or a kill -9 loses nothing it acknowledged,
and ``read_committed`` consumers skip aborted transactions. Tansu
(`cdc.devservers.Broker`) is in memory: fast, for the demo and a fast subset,
and a restart loses everything.

``CDC_TEST_BROKER`` narrows the choice: ``kafka``, ``tansu`` (both: unset).
Both launchers have one interface, `BrokerProcess`.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Protocol

from cdc.devservers import Broker, KafkaServer, KafkaUnavailable
from cdc.devservers.kafka import find_java, kafka_cache

KAFKA = "kafka"
TANSU = "tansu"
BROKER_KINDS = (KAFKA, TANSU)


class BrokerProcess(Protocol):
    """A broker process the tests start, stop, kill, pause and restart (`Broker`, `KafkaServer`)."""

    pid: int

    @property
    def bootstrap_servers(self) -> str: ...

    @property
    def log_path(self) -> Path: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def kill(self) -> None: ...

    def restart(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def destroy(self) -> None: ...


def chosen_kinds() -> tuple[str, ...]:
    """The kinds ``CDC_TEST_BROKER`` allows (both when unset); `ValueError` for anything else."""
    value = os.environ.get("CDC_TEST_BROKER", "").strip().lower()
    if not value:
        return BROKER_KINDS
    if value not in BROKER_KINDS:
        raise ValueError(f"CDC_TEST_BROKER={value!r}: use kafka or tansu (or leave it unset for both)")
    return (value,)


@functools.cache
def kafka_missing() -> str:
    """Why Apache Kafka cannot run here ("" when it can), without fetching anything.

    It needs Java 17+ and its jars: in the cache already (``make setup``), or
    Maven to fetch them on first use.
    """
    try:
        find_java()
    except KafkaUnavailable as exc:
        return str(exc)
    cache = kafka_cache()
    if not (cache / ".complete").exists() and not shutil.which("mvn"):
        return f"no Kafka jars in {cache} and no mvn on the PATH to fetch them: apt-get install maven"
    return ""


def durable(broker: BrokerProcess) -> bool:
    """Does a restart of ``broker`` keep what it acknowledged? (Kafka: yes; Tansu: no.)"""
    return isinstance(broker, KafkaServer)


def kind_of(broker: BrokerProcess) -> str:
    return KAFKA if isinstance(broker, KafkaServer) else TANSU


def create_broker(kind: str, base_dir: Path | None = None) -> BrokerProcess:
    """A broker of ``kind``, not started (`KafkaUnavailable` when Kafka cannot run here)."""
    if kind == KAFKA:
        return KafkaServer.create(base_dir)
    if kind == TANSU:
        return Broker.create(base_dir)
    raise ValueError(f"unknown broker kind {kind!r}: {' or '.join(BROKER_KINDS)}")
