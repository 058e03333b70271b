"""Apache Kafka 4 in KRaft mode, from Maven Central, for the tests and the benchmark.

This is the broker the suite's claims rest on (DESIGN.md): durable restarts,
transactions, consumer groups, SASL and TLS. One JVM per server, broker and
controller combined, its log directory on disk, so data survives stop/start
and kill -9. The jars are resolved once with Maven into a cache
(``~/.cache/cdc/kafka-<version>``; ``CDC_KAFKA_CACHE`` moves ``~/.cache/cdc``)
and used offline after that. The JVM starts with a class-data-sharing archive
that the first clean stop leaves in the cache: it roughly halves the start
(from about 4 s to 2 s here).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from cdc.devservers.process import (
    free_ports,
    kill_process,
    pause_process,
    send_signal,
    start_attempts,
    stop_process,
)
from cdc.devservers.tls import TestCA, TlsUnavailable
from cdc.errors import ServerError

log = logging.getLogger(__name__)

#: The newest 4.x served by Maven Central that runs on Java 17 here.
KAFKA_VERSION = "4.4.0"
#: Kafka logs through slf4j 1.7; its distribution adds this binding to its log4j-core.
LOG4J_VERSION = "2.25.5"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
#: Kafka 4 brokers need Java 17.
JAVA_MIN = 17
SCRAM_MECHANISM = "SCRAM-SHA-512"
#: The line the server logs once every listener accepts requests.
STARTED_MARKER = "Kafka Server started"

#: One node that must start (and restart after kill -9) fast and stay small:
#: internal topics with one partition and one replica (50 partitions of
#: __consumer_offsets take seconds to create), no delay before the first
#: rebalance, few threads, and a small log-cleaner buffer (128 MiB by default,
#: allocated on the heap at start).
BASE_PROPERTIES: dict[str, str] = {
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    # after kill -9 the controller refuses the new broker (DUPLICATE_BROKER_REGISTRATION) until
    # the old one's session expires: 9 s by default, 3 s here
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
    "auto.create.topics.enable": "true",
    "num.network.threads": "2",
    "num.io.threads": "2",
    "background.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
    "log.cleaner.dedupe.buffer.size": str(4 << 20),
    "log.cleaner.io.buffer.size": str(64 << 10),
}

#: The server log: warnings and errors only, plus the line that says it started (read by `start`).
LOG4J_CONFIG = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""

_POM = """\
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>cdc.devservers</groupId>
  <artifactId>kafka-server</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


class KafkaUnavailable(ServerError):
    """This machine lacks a tool that runs Kafka (Java 17+, Maven, openssl).

    A `ServerError` like any launcher failure; a test fixture may turn this
    one into a skip, since nothing in the project is wrong.
    """


# -- the jars ---------------------------------------------------------------------------


@functools.cache
def find_java() -> str:
    """The ``java`` of ``JAVA_HOME`` or the PATH; `KafkaUnavailable` when none is 17 or newer."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise KafkaUnavailable(
            "no java on the PATH (nor in JAVA_HOME): Kafka needs Java 17+, "
            "e.g. apt-get install openjdk-17-jre-headless"
        )
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        ).stderr
    except (OSError, subprocess.SubprocessError) as exc:
        raise KafkaUnavailable(f"cannot run {java} -version: {exc}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise KafkaUnavailable(f"cannot read the version of {java}: {out.strip()[:200]!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392"
        major = int(match.group(2))
    if major < JAVA_MIN:
        raise KafkaUnavailable(f"{java} is Java {major}; Kafka 4 brokers need Java {JAVA_MIN}+")
    return java


def kafka_cache(version: str = KAFKA_VERSION) -> Path:
    """Where the jars of ``version`` live: ``$CDC_KAFKA_CACHE/kafka-<version>`` (default ~/.cache/cdc)."""
    root = os.environ.get("CDC_KAFKA_CACHE")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cdc")
    return Path(root).expanduser() / f"kafka-{version}"


@dataclass(frozen=True, slots=True)
class KafkaInstall:
    """The jars of one Kafka version in the cache, and the java that runs them."""

    version: str
    home: Path
    java: str

    @property
    def lib_dir(self) -> Path:
        return self.home / "libs"

    @property
    def classpath(self) -> str:
        return f"{self.lib_dir}/*"

    @property
    def cds_archive(self) -> Path:
        """The class-data-sharing archive for this java: it is valid for one JVM build only."""
        java = Path(self.java).resolve()
        st = java.stat()
        key = hashlib.sha256(f"{java}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return self.home / f"classes-{key}.jsa"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (test workers fetching at the same time)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def kafka_install(version: str = KAFKA_VERSION) -> KafkaInstall:
    """The jars of Kafka ``version``, fetched with Maven on first use, offline after that.

    Raises `KafkaUnavailable` without java (or without mvn while the cache is
    empty), `ServerError` when Maven fails.
    """
    java = find_java()
    home = kafka_cache(version)
    if not (home / ".complete").exists():
        try:
            home.mkdir(parents=True, exist_ok=True)
            with _locked(home / ".lock"):
                if not (home / ".complete").exists():
                    _fetch(version, home)
        except OSError as exc:
            raise ServerError(f"cannot fill the kafka jar cache {home}: {exc}; set CDC_KAFKA_CACHE") from exc
    return KafkaInstall(version, home, java)


def _fetch(version: str, home: Path) -> None:
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaUnavailable(
            f"no mvn on the PATH to fetch the Kafka {version} jars into {home}: apt-get install maven"
        )
    log.info("fetching the kafka %s jars into %s", version, home)
    staging = Path(tempfile.mkdtemp(prefix="fetch-", dir=home))
    try:
        pom = staging / "pom.xml"
        pom.write_text(_POM.format(version=version, log4j=LOG4J_VERSION))
        try:
            proc = subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(pom),
                    f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                    f"-DoutputDirectory={staging / 'libs'}",
                    "-DincludeScope=runtime",
                ],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServerError(f"mvn could not fetch the kafka {version} jars: {exc}") from exc
        errors = [line for line in proc.stdout.splitlines() if line.startswith("[ERROR]")]
        if proc.returncode != 0 or not list((staging / "libs").glob("kafka_2.13-*.jar")):
            detail = errors[0] if errors else (proc.stderr or proc.stdout).strip()[-300:]
            raise ServerError(
                f"mvn could not fetch the kafka {version} jars: {detail}; try: mvn -f {pom} "
                f"{DEPENDENCY_PLUGIN}:copy-dependencies"
            )
        shutil.rmtree(home / "libs", ignore_errors=True)
        os.replace(staging / "libs", home / "libs")
        os.replace(pom, home / "pom.xml")
        jars = sorted(p.name for p in (home / "libs").iterdir())
        (home / ".complete").write_text("\n".join(jars) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- TLS and SASL -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A CA and a broker certificate it signed for ``localhost`` (only: clients that verify the
    broker's name must call it that); ``ca`` issues client certificates too."""

    ca_path: Path
    keystore_path: Path
    keystore_password: str
    ca: TestCA | None = None


def make_tls(directory: Path, hostname: str = "localhost") -> TlsFiles:
    """Generate a CA and a PKCS#12 keystore for the broker into ``directory`` with openssl.

    Raises `KafkaUnavailable` without openssl, `ServerError` when it fails.
    """
    try:
        ca = TestCA.create(directory)
    except TlsUnavailable as exc:
        raise KafkaUnavailable(str(exc)) from None
    keystore, password = ca.keystore(ca.issue("broker", (hostname,)), "broker")
    return TlsFiles(ca.cert_path, keystore, password, ca)


@dataclass(frozen=True, slots=True)
class Listener:
    """A client listener besides PLAINTEXT: its name, security protocol and own settings.

    ``settings`` are written as ``listener.name.<name>.<key>``. ``advertised_host``
    is the name clients are sent in metadata: ``localhost`` for TLS, so that
    hostname verification has the certificate's name to check.
    """

    name: str
    protocol: str
    settings: Mapping[str, str] = field(default_factory=dict)
    advertised_host: str = ""


def scram_settings() -> dict[str, str]:
    """Listener settings for SCRAM-SHA-512 logins (users are created at format time)."""
    return {
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        f"{SCRAM_MECHANISM.lower()}.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
    }


def tls_settings(tls: TlsFiles) -> dict[str, str]:
    return {
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(tls.keystore_path),
        "ssl.keystore.password": tls.keystore_password,
        "ssl.key.password": tls.keystore_password,
    }


def mutual_tls_settings(tls: TlsFiles) -> dict[str, str]:
    """TLS that requires a client certificate signed by the test CA."""
    return {
        **tls_settings(tls),
        "ssl.client.auth": "required",
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls.ca_path),
    }


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    """What a client needs to reach one listener, in terms any Kafka client maps 1:1."""

    bootstrap_servers: str
    security_protocol: str
    ca_path: Path | None = None
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = None


# -- the server ---------------------------------------------------------------------------


def _cluster_id() -> str:
    """A random cluster id as Kafka writes them; never one starting with "-", which kafka-storage's
    argument parser reads as an option (Kafka's own Uuid.randomUuid avoids those too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _property_line(key: str, value: str) -> str:
    if "\n" in value or "\n" in key:
        raise ServerError(f"kafka property {key!r} has a line break; one line per property")
    return f"{key}={value.replace(chr(92), chr(92) * 2)}\n"


def _failure_cause(text: str) -> str:
    """The one line of a Kafka log that names why it stopped: its first exception, else its first error."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    exception = re.compile(r"(?:[a-z_$][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error): .*")
    causes = [m.group(0) for line in lines if not line.startswith("at ") and (m := exception.search(line))]
    if causes:
        return causes[0]
    errors = [line for line in lines if " ERROR " in line or " FATAL " in line]
    return errors[0] if errors else " | ".join(lines[-3:]) or "(empty log)"


@dataclass
class KafkaServer:
    """One Apache Kafka node (broker and KRaft controller) with its data on disk.

    The interface of the Tansu `Broker`: `create`, `start`, `stop`, `restart`,
    `pause`/`resume` (SIGSTOP/SIGCONT), `destroy`, `bootstrap_servers`,
    `log_path`, a context manager; and `kill` for kill -9. Ports are picked
    at the first start and kept by later ones, so clients reconnect to the
    same address; the data directory is formatted once, so a restart keeps
    every acknowledged record.
    """

    base_dir: Path
    install: KafkaInstall
    properties: dict[str, str] = field(default_factory=dict)
    listeners: list[Listener] = field(default_factory=list)
    scram_users: dict[str, str] = field(default_factory=dict)
    tls: TlsFiles | None = None
    heap: str = "256m"
    jvm_options: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    #: Run the JVM under this command (``ip netns exec NAME`` for a shaped link).
    command_prefix: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    pid: int = 0
    cluster_id: str = field(default_factory=_cluster_id)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _dumping: Path | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        base_dir: Path | None = None,
        *,
        version: str = KAFKA_VERSION,
        properties: Mapping[str, str] | None = None,
        listeners: Sequence[Listener] = (),
        scram_users: Mapping[str, str] | None = None,
        tls: bool = False,
        tls_client_auth: bool = False,
        heap: str = "256m",
        jvm_options: Sequence[str] = (),
    ) -> KafkaServer:
        """A server in ``base_dir`` (a new temp dir by default), not started yet.

        ``scram_users`` (name -> password) are created at format time and add a
        SASL_PLAINTEXT listener ``SASL`` with SCRAM-SHA-512; ``tls`` makes a CA
        and a certificate for ``localhost`` and adds an ``SSL`` listener (and
        ``SASL_SSL`` when both are asked for); ``tls_client_auth`` adds ``MTLS``,
        an SSL listener that requires a client certificate of that CA
        (``server.tls.ca.issue(..., client=True)``). ``properties`` are written
        last, so they override anything. Raises `KafkaUnavailable` when java,
        mvn or openssl is missing.
        """
        for name, password in (scram_users or {}).items():
            # kafka-storage parses name="..",password=".." inside [..]
            if not re.fullmatch(r"[\w.@-]+", name) or re.search(r'["\s,\]\[]', password):
                raise ServerError(
                    f"scram user {name!r}: a name of letters, digits, . _ - @ and a password "
                    "without quotes, spaces, commas or brackets"
                )
        install = kafka_install(version)
        if base_dir is None:
            base_dir = Path(tempfile.mkdtemp(prefix="cdc-kafka-"))
        base_dir.mkdir(parents=True, exist_ok=True)
        server = cls(
            base_dir,
            install,
            properties=dict(properties or {}),
            listeners=list(listeners),
            scram_users=dict(scram_users or {}),
            heap=heap,
            jvm_options=list(jvm_options),
        )
        if scram_users:
            server.listeners.append(Listener("SASL", "SASL_PLAINTEXT", scram_settings()))
        if tls or tls_client_auth:
            server.tls = make_tls(base_dir / "tls")
            server.listeners.append(Listener("SSL", "SSL", tls_settings(server.tls), "localhost"))
            if scram_users:
                both = {**tls_settings(server.tls), **scram_settings()}
                server.listeners.append(Listener("SASL_SSL", "SASL_SSL", both, "localhost"))
            if tls_client_auth:
                mutual = mutual_tls_settings(server.tls)
                server.listeners.append(Listener("MTLS", "SSL", mutual, "localhost"))
        return server

    # -- where it is

    @property
    def port(self) -> int:
        """The PLAINTEXT listener's port (0 before the first start)."""
        return self.ports.get("PLAINTEXT", 0)

    @property
    def bootstrap_servers(self) -> str:
        return self.bootstrap("PLAINTEXT")

    def bootstrap(self, listener: str) -> str:
        """``host:port`` of a listener as clients must name it (``localhost`` for TLS)."""
        spec = self._listener(listener)
        return f"{spec.advertised_host or self.host}:{self.ports.get(spec.name, 0)}"

    def client_security(self, listener: str = "PLAINTEXT", user: str | None = None) -> ClientSecurity:
        """The address, protocol, CA and login a client needs for ``listener``."""
        spec = self._listener(listener)
        sasl = spec.protocol.startswith("SASL_")
        if sasl and user is None:
            user = next(iter(self.scram_users), None)
        return ClientSecurity(
            bootstrap_servers=self.bootstrap(listener),
            security_protocol=spec.protocol,
            ca_path=self.tls.ca_path if self.tls and spec.protocol.endswith("SSL") else None,
            sasl_mechanism=SCRAM_MECHANISM if sasl else None,
            username=user if sasl else None,
            password=self.scram_users.get(user or "") if sasl else None,
        )

    def _listener(self, name: str) -> Listener:
        if name == "PLAINTEXT":
            return Listener("PLAINTEXT", "PLAINTEXT")
        for spec in self.listeners:
            if spec.name == name:
                return spec
        raise ServerError(f"kafka has no listener {name!r}: it has PLAINTEXT, {self._names()[1:]}")

    def _names(self) -> list[str]:
        return ["PLAINTEXT", *(spec.name for spec in self.listeners)]

    @property
    def log_path(self) -> Path:
        return self.base_dir / "kafka.log"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def version(self) -> str:
        return self.install.version

    # -- configuration

    def server_properties(self) -> dict[str, str]:
        """The server's configuration for the current ports."""
        listeners = [self._listener(name) for name in self._names()]
        cport = self.ports["CONTROLLER"]
        client = [f"{s.name}://{self.host}:{self.ports[s.name]}" for s in listeners]
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            # static voters: the quorum remembers no address, so a restart may move ports
            "controller.quorum.voters": f"1@{self.host}:{cport}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listeners": ",".join([*client, f"CONTROLLER://{self.host}:{cport}"]),
            "advertised.listeners": ",".join(
                f"{s.name}://{s.advertised_host or self.host}:{self.ports[s.name]}" for s in listeners
            ),
            "listener.security.protocol.map": ",".join(
                [*(f"{s.name}:{s.protocol}" for s in listeners), "CONTROLLER:PLAINTEXT"]
            ),
            "log.dirs": str(self.data_dir),
            **BASE_PROPERTIES,
        }
        for spec in listeners:
            for key, value in spec.settings.items():
                props[f"listener.name.{spec.name.lower()}.{key}"] = value
        props.update(self.properties)
        return props

    @property
    def _config_path(self) -> Path:
        return self.base_dir / "server.properties"

    def _write_config(self) -> None:
        lines = (_property_line(key, value) for key, value in self.server_properties().items())
        self._config_path.write_text("".join(lines))
        self._config_path.chmod(0o600)  # keystore passwords
        (self.base_dir / "log4j2.properties").write_text(LOG4J_CONFIG)

    def _java(self, *, dump_archive: bool) -> list[str]:
        """The JVM command line: a small heap, C1 only and a shared class archive start it fast."""
        options = [
            f"-Xmx{self.heap}",
            "-Xms32m",
            "-Xss512k",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:+ExitOnOutOfMemoryError",
            "-Xlog:cds=off,cds+dynamic=off",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.base_dir / 'log4j2.properties'}",
        ]
        archive = self.install.cds_archive
        self._dumping = None
        if archive.exists():
            options.append(f"-XX:SharedArchiveFile={archive}")
        elif dump_archive and os.access(archive.parent, os.W_OK):
            self._dumping = archive.with_name(f"{archive.name}.{os.getpid()}-{secrets.token_hex(3)}")
            options.append(f"-XX:ArchiveClassesAtExit={self._dumping}")
        java = [*self.command_prefix, self.install.java]
        return [*java, *options, *self.jvm_options, "-cp", self.install.classpath]

    # -- lifecycle

    def _pick_ports(self) -> None:
        names = [*self._names(), "CONTROLLER"]
        self.ports = dict(zip(names, free_ports(len(names), self.host), strict=True))

    def format(self) -> None:
        """``kafka-storage format``: the cluster id, and the SCRAM users in the first metadata."""
        args = [*self._java(dump_archive=False), "kafka.tools.StorageTool", "format"]
        args += ["--cluster-id", self.cluster_id, "--config", str(self._config_path)]
        for name, password in self.scram_users.items():
            args += ["--add-scram", f'{SCRAM_MECHANISM}=[name="{name}",password="{password}"]']
        try:
            proc = subprocess.run(
                args, capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServerError(f"kafka-storage format in {self.data_dir} failed: {exc}") from exc
        with self.log_path.open("a") as out:
            out.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise ServerError(
                f"kafka-storage format in {self.data_dir} failed: "
                f"{_failure_cause(proc.stdout + proc.stderr)}; log: {self.log_path}"
            )

    def start(self, attempts: int = 3, timeout: float = 90) -> None:
        """Start and wait until every listener serves; `ServerError` names the cause and the log."""
        cause = ""
        for pick in start_attempts(attempts, held=bool(self.ports)):
            if pick:
                self._pick_ports()
            self._write_config()
            if not (self.data_dir / "meta.properties").exists():
                self.format()
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            started = time.monotonic()
            with self.log_path.open("ab") as out:
                proc = subprocess.Popen(
                    [*self._java(dump_archive=True), "kafka.Kafka", str(self._config_path)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=self.base_dir,
                )
            self.pid, self._proc = proc.pid, proc
            text = self._wait_started(proc, offset, timeout)
            if text is None:
                log.info(
                    "kafka %s on %s in %.1fs (log %s)",
                    self.version,
                    self.bootstrap_servers,
                    time.monotonic() - started,
                    self.log_path,
                )
                return
            kill_process(proc.pid, proc)
            self._discard_archive()
            self.pid, self._proc = 0, None
            cause = _failure_cause(text) if text else f"not serving after {timeout:.0f}s"
            if "Address already in use" not in text:
                break
        raise ServerError(
            f"kafka {self.version} did not start on {self.bootstrap_servers}: {cause}; log: {self.log_path}"
        )

    def _wait_started(self, proc: subprocess.Popen[bytes], offset: int, timeout: float) -> str | None:
        """None once the server says it started; else what it logged before dying or timing out."""
        deadline = time.monotonic() + timeout
        text = ""
        with self.log_path.open("rb") as log_file:
            log_file.seek(offset)
            while True:
                text += log_file.read().decode(errors="replace")
                if STARTED_MARKER in text:
                    return None
                if proc.poll() is not None:
                    time.sleep(0.1)  # the last lines of a dying JVM
                    return text + log_file.read().decode(errors="replace")
                if time.monotonic() > deadline:
                    return text
                time.sleep(0.03)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (a controlled shutdown), SIGKILL after ``timeout`` s; ports and data stay."""
        if not self.pid:
            return
        clean = stop_process(self.pid, self._proc, grace=timeout)
        self.pid, self._proc = 0, None
        if clean and self._dumping is not None and self._dumping.exists() and self._dumping.stat().st_size:
            # the first clean stop leaves the classes it loaded for every later start
            os.replace(self._dumping, self.install.cds_archive)
            log.info("kafka class archive for faster starts: %s", self.install.cds_archive)
            self._dumping = None
        self._discard_archive()

    def kill(self) -> None:
        """kill -9: no shutdown at all; acknowledged records are in the page cache and survive."""
        if self.pid:
            kill_process(self.pid, self._proc)
            self.pid, self._proc = 0, None
        self._discard_archive()

    def _discard_archive(self) -> None:
        if self._dumping is not None:
            self._dumping.unlink(missing_ok=True)
            self._dumping = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        pause_process(self.pid)

    def resume(self) -> None:
        send_signal(self.pid, signal.SIGCONT)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()


def prepare_kafka(version: str = KAFKA_VERSION) -> str:
    """Fetch the jars and leave the class archive, so that tests pay neither; say what was done."""
    install = kafka_install(version)
    if not install.cds_archive.exists():
        with KafkaServer.create(version=version) as server:
            server.stop()
    archive = "with" if install.cds_archive.exists() else "without"
    return f"kafka {version}: jars in {install.lib_dir}, {archive} a class archive"
