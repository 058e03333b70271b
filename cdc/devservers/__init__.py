"""Local servers for `cdc dev`, the tests and the benchmark: Postgres, Apache Kafka, Tansu.

Every one is a real server on loopback ports, started and stopped here so that
every caller (pytest fixtures, ``cdc dev up``, ``make bench``) runs them the
same way:

- `postgres`: throwaway clusters from the server wheels or the system;
- `kafka`: Apache Kafka 4 (KRaft) from Maven Central, data on disk, the broker
  the tests' claims rest on (durable restarts, transactions, SASL, TLS);
- `tansu`: the Kafka-compatible Tansu broker, in memory, for the demo and a
  fast subset;
- `tls`: a throwaway CA (openssl) for the servers' and clients' certificates;
- `process`: ports and processes they share.
"""

from __future__ import annotations

from cdc.devservers.kafka import (
    KAFKA_VERSION,
    ClientSecurity,
    KafkaInstall,
    KafkaServer,
    KafkaUnavailable,
    Listener,
    TlsFiles,
    kafka_install,
    prepare_kafka,
)
from cdc.devservers.postgres import (
    SERVER_SETTINGS,
    SERVER_TIMEZONE,
    PgInstall,
    PostgresServer,
    RunAs,
    copy_install,
    find_pg_installs,
    pg_install_at,
    reachable_install,
    server_account,
)
from cdc.devservers.process import alive, free_port, log_tail, wait_for_port
from cdc.devservers.tansu import Broker, tansu_binary
from cdc.devservers.tls import Certificate, TestCA, TlsUnavailable

# the names of the module this package replaced
_alive = alive
_tail = log_tail

__all__ = [
    "KAFKA_VERSION",
    "SERVER_SETTINGS",
    "SERVER_TIMEZONE",
    "Broker",
    "Certificate",
    "ClientSecurity",
    "KafkaInstall",
    "KafkaServer",
    "KafkaUnavailable",
    "Listener",
    "PgInstall",
    "PostgresServer",
    "RunAs",
    "TestCA",
    "TlsFiles",
    "TlsUnavailable",
    "_alive",
    "_tail",
    "alive",
    "copy_install",
    "find_pg_installs",
    "free_port",
    "kafka_install",
    "log_tail",
    "pg_install_at",
    "prepare_kafka",
    "reachable_install",
    "server_account",
    "tansu_binary",
    "wait_for_port",
]
