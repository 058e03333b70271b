"""Debezium's PostgreSQL connector as an oracle: the change events it emits, as JSON, without Kafka.

Debezium's embedded engine and PostgreSQL connector come from Maven Central
(``io.debezium:debezium-embedded`` and ``debezium-connector-postgres``, with
their dependencies, resolved once into the peers cache). A small Java main,
``DebeziumOracle.java`` beside this file, compiled once into the cache, runs
the engine and prints each record on stdout as Kafka Connect's JsonConverter
renders it, with and without ``schemas.enable``. This module starts it on a
DSN and a table list and collects the lines.

    with Debezium.start(db.dsn, ["public.t"]) as dbz:   # returns once streaming
        dbz.records()            # the snapshot ("r") so far
        ... make changes ...
        events = dbz.sync()      # every record up to now, in order

The engine keeps its offsets in memory and drops its slot when it stops, so
each start is a fresh connector (snapshot included, per ``snapshot_mode``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tests.peers.jvm import (
    Java,
    PeerError,
    cache_dir,
    find_java,
    locked,
    maven_classpath,
    rss_bytes,
    stop_process,
    tail,
)

DEBEZIUM_VERSION = "3.6.1.Final"
SLF4J_VERSION = "1.7.36"  # the slf4j-api that Debezium 3.6 resolves to; simple logger on stderr
MAIN_SOURCE = Path(__file__).with_name("DebeziumOracle.java")
MAIN_CLASS = "DebeziumOracle"

#: The prefix of the logical messages that ``sync`` writes; they never show in ``records()``.
SYNC_PREFIX = "cdc-peers-sync"


@dataclass(frozen=True, slots=True)
class DebeziumInstall:
    java: Java
    classpath: str
    version: str


def debezium_install(version: str = DEBEZIUM_VERSION) -> DebeziumInstall:
    """Jars of the engine + connector and the compiled main, in the cache (built on first use)."""
    java = find_java(17)
    home = cache_dir() / f"debezium-{version}"
    done = home / ".complete"
    with locked(f"debezium-{version}"):
        if not done.is_file():
            maven_classpath(
                [
                    f"io.debezium:debezium-embedded:{version}",
                    f"io.debezium:debezium-connector-postgres:{version}",
                    f"org.slf4j:slf4j-simple:{SLF4J_VERSION}",
                ],
                home,
            )
            done.write_text(version + "\n")
        source = MAIN_SOURCE.read_bytes()
        digest = hashlib.sha256(source + str(java.major).encode()).hexdigest()[:16]
        classes = home / f"classes-{digest}"
        if not (classes / f"{MAIN_CLASS}.class").is_file():
            work = Path(tempfile.mkdtemp(dir=home, prefix="classes-tmp-"))
            compiled = subprocess.run(
                [
                    java.javac,
                    "--release",
                    "17",
                    "-d",
                    str(work),
                    "-cp",
                    str(home / "lib" / "*"),
                    str(MAIN_SOURCE),
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if compiled.returncode != 0:
                shutil.rmtree(work, ignore_errors=True)
                raise PeerError(f"javac {MAIN_SOURCE.name} failed: {compiled.stderr[-2000:]}")
            work.rename(classes)
    return DebeziumInstall(java, f"{home / 'lib' / '*'}:{classes}", version)


@dataclass(frozen=True, slots=True)
class Record:
    """One record as Kafka Connect's JsonConverter writes it.

    ``key``/``value``: with ``schemas.enable=true`` (``{"schema": ..., "payload": ...}``);
    ``key_plain``/``value_plain``: with ``schemas.enable=false``. ``None`` for no key / a tombstone.
    """

    topic: str
    key: Any
    value: Any
    key_plain: Any
    value_plain: Any

    @property
    def op(self) -> str | None:
        """``r``, ``c``, ``u``, ``d``, ``t``, ``m``; ``None`` for a tombstone."""
        if isinstance(self.value_plain, dict):
            op = self.value_plain.get("op")
            return op if isinstance(op, str) else None
        return None

    @property
    def before(self) -> Any:
        return self.value_plain.get("before") if isinstance(self.value_plain, dict) else None

    @property
    def after(self) -> Any:
        return self.value_plain.get("after") if isinstance(self.value_plain, dict) else None

    @property
    def source(self) -> dict[str, Any]:
        src = self.value_plain.get("source") if isinstance(self.value_plain, dict) else None
        return src if isinstance(src, dict) else {}

    @property
    def is_sync_marker(self) -> bool:
        message = self.value_plain.get("message") if isinstance(self.value_plain, dict) else None
        return isinstance(message, dict) and message.get("prefix") == SYNC_PREFIX


def connector_config(
    dsn: str,
    tables: Sequence[str] | None,
    *,
    name: str,
    topic_prefix: str,
    slot: str,
    publication: str,
    snapshot_mode: str,
) -> dict[str, str]:
    """Debezium's properties for the pgoutput connector on ``dsn`` (libpq key=value or URL)."""
    params = conninfo_to_dict(dsn)
    config = {
        "name": name,
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        # no Kafka: offsets in memory; every start is a fresh connector
        "offset.storage": "org.apache.kafka.connect.storage.MemoryOffsetBackingStore",
        "offset.flush.interval.ms": "0",
        "database.hostname": str(params.get("host") or "127.0.0.1"),
        "database.port": str(params.get("port") or 5432),
        "database.user": str(params.get("user") or "postgres"),
        "database.password": str(params.get("password") or ""),
        "database.dbname": str(params.get("dbname") or "postgres"),
        "topic.prefix": topic_prefix,
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "publication.name": publication,
        # only the listed tables; all_tables (the default) needs a superuser
        "publication.autocreate.mode": "filtered" if tables else "all_tables",
        # truncates are skipped by default ("t")
        "skipped.operations": "none",
        "slot.drop.on.stop": "true",
        "snapshot.mode": snapshot_mode,
        "status.update.interval.ms": "1000",
    }
    if tables:
        config["table.include.list"] = ",".join(tables)
    return config


@dataclass
class Debezium:
    """A running Debezium engine and the records it has emitted so far."""

    config: dict[str, str]
    json_config: dict[str, str]
    install: DebeziumInstall
    base_dir: Path
    log_level: str = "warn"
    process: subprocess.Popen[bytes] | None = None
    started_in: float = 0.0
    _records: list[Record] = field(default_factory=list)
    _streaming: bool = False
    _done: dict[str, Any] | None = None
    _lines: threading.Condition = field(default_factory=threading.Condition)
    _reader: threading.Thread | None = None
    _owns_dir: bool = False

    @classmethod
    def start(
        cls,
        dsn: str,
        tables: Sequence[str] | None = None,
        *,
        topic_prefix: str = "dbz",
        slot: str | None = None,
        publication: str | None = None,
        snapshot_mode: str = "initial",
        config: Mapping[str, str] | None = None,
        json_config: Mapping[str, str] | None = None,
        log_level: str = "warn",
        timeout: float = 180,
        base_dir: Path | None = None,
    ) -> Debezium:
        """Start the connector; return once it is streaming (its snapshot, if any, is taken).

        ``config`` adds or overrides Debezium properties (``decimal.handling.mode``,
        ``interval.handling.mode``, ``provide.transaction.metadata``, ...);
        ``json_config`` goes to both JsonConverters (``decimal.format``: BASE64 or NUMERIC).
        """
        token = secrets.token_hex(4)
        props = connector_config(
            dsn,
            tables,
            name=f"oracle-{token}",
            topic_prefix=topic_prefix,
            slot=slot or f"dbz_{token}",
            publication=publication or f"dbz_{token}",
            snapshot_mode=snapshot_mode,
        )
        props.update(config or {})
        owns = base_dir is None
        if base_dir is None:
            base_dir = Path(tempfile.mkdtemp(prefix="cdc-debezium-"))
        engine = cls(props, dict(json_config or {}), debezium_install(), base_dir, log_level, _owns_dir=owns)
        try:
            engine._launch(timeout)
        except BaseException:
            engine.destroy()
            raise
        return engine

    @property
    def log_path(self) -> Path:
        return self.base_dir / "debezium.log"

    @property
    def topic_prefix(self) -> str:
        return self.config["topic.prefix"]

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def rss(self) -> int:
        return rss_bytes(self.pid) if self.process else 0

    def _launch(self, timeout: float) -> None:
        props = self.base_dir / "debezium.properties"
        props.touch(mode=0o600)
        lines = [f"{k}={_escape(v)}" for k, v in self.config.items()]
        lines += [f"json.{k}={_escape(v)}" for k, v in self.json_config.items()]
        props.write_text("\n".join(lines) + "\n")
        command = [
            self.install.java.java,
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-Xmx512m",
            "-XX:-UsePerfData",
            f"-Dorg.slf4j.simpleLogger.defaultLogLevel={self.log_level}",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-cp",
            self.install.classpath,
            MAIN_CLASS,
            str(props),
        ]
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.base_dir,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self.process.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stdout,), name="debezium-reader", daemon=True
        )
        self._reader.start()
        with self._lines:
            ready = self._lines.wait_for(lambda: self._streaming or self._done is not None, timeout)
        if self._done is not None or not ready:
            what = f"ended: {self._done.get('message')}" if self._done else f"not streaming after {timeout}s"
            raise PeerError(f"Debezium {what}\n{tail(self.log_path)}")
        self.started_in = time.monotonic() - began

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            with self._lines:
                kind = line.get("kind")
                if kind == "record":
                    self._records.append(
                        Record(
                            line["topic"], line["key"], line["value"], line["key_plain"], line["value_plain"]
                        )
                    )
                elif kind == "streaming":
                    self._streaming = True
                elif kind == "done":
                    self._done = line
                self._lines.notify_all()
        with self._lines:
            if self._done is None:
                self._done = {"kind": "done", "success": False, "message": "the Java process exited"}
            self._lines.notify_all()

    def records(self, *, include_sync: bool = False) -> list[Record]:
        """Every record so far, in emission order (snapshot first)."""
        with self._lines:
            return [r for r in self._records if include_sync or not r.is_sync_marker]

    def wait_for(self, condition: Callable[[list[Record]], bool], timeout: float = 60) -> list[Record]:
        """Wait until ``condition(records)`` holds; return the records then."""
        with self._lines:
            self._lines.wait_for(lambda: condition(self._records) or self._done is not None, timeout)
            if condition(self._records):
                return [r for r in self._records if not r.is_sync_marker]
        what = f"the engine ended ({self._done})" if self._done else f"timed out after {timeout}s"
        raise PeerError(f"Debezium: condition not met, {what}" + f"\n{tail(self.log_path)}")

    def sync(self, timeout: float = 60) -> list[Record]:
        """All records of the transactions committed before this call (a logical message
        written now comes back after them)."""
        token = secrets.token_hex(8)
        dsn = " ".join(
            f"{k}={v}"
            for k, v in {
                "host": self.config["database.hostname"],
                "port": self.config["database.port"],
                "dbname": self.config["database.dbname"],
                "user": self.config["database.user"],
                "password": self.config["database.password"],
            }.items()
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_logical_emit_message(true, %s, %s)", (SYNC_PREFIX, token))
        # the content is bytes: base64 by default, hex or url-safe base64 with binary.handling.mode
        raw = token.encode()
        expected = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(), raw.hex()}

        def arrived(records: list[Record]) -> bool:
            return any(
                r.is_sync_marker and r.value_plain["message"].get("content") in expected for r in records
            )

        return self.wait_for(arrived, timeout)

    def stop(self, timeout: float = 60) -> None:
        """Close the engine (stdin EOF): it commits its offsets, drops its slot, exits."""
        if self.process is None or self.process.poll() is not None:
            return
        assert self.process.stdin is not None
        try:
            self.process.stdin.close()
            self.process.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            stop_process(self.process)
        if self._reader is not None:
            self._reader.join(10)

    def destroy(self) -> None:
        self.stop()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()


def _escape(value: str) -> str:
    """A java.util.Properties value: backslashes and leading blanks escaped."""
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n")
    return "\\" + escaped if escaped[:1] in (" ", "\t") else escaped
