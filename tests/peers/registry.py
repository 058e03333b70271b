"""A Confluent-compatible Schema Registry for the tests: Apicurio Registry, in memory.

Apicurio Registry (Apache-2.0, a Quarkus application) is published on Maven
Central as a ready-to-run distribution, ``io.apicurio:apicurio-registry-app:
VERSION:tar.gz:all``; it is downloaded once into the peers cache and unpacked.
Its Confluent Schema Registry API (``/apis/ccompat/v7``) is what
confluent-kafka's ``SchemaRegistryClient``, ``AvroSerializer`` and
``AvroDeserializer`` talk to. Storage is its default, an in-memory H2
database: every start is empty.

Version 3.x needs Java 21+ (``/usr/lib/jvm/temurin-25-jdk-amd64`` here); with
only Java 17 the 2.6 line is used, which stores schema text verbatim instead of
deduplicating equal schemas written differently (see ``REGISTRY_NOTES``).

    with SchemaRegistry.start() as registry:
        client = SchemaRegistryClient({"url": registry.url})
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from cdc.devservers import free_port
from tests.peers.jvm import (
    Java,
    PeerError,
    cache_dir,
    find_java,
    locked,
    maven_copy,
    rss_bytes,
    stop_process,
    tail,
)

APICURIO_VERSION = "3.3.3"  # needs Java 21+
APICURIO_JAVA17_VERSION = "2.6.13.Final"  # the newest line that runs on Java 17
CCOMPAT_PATH = "/apis/ccompat/v7"

#: Confluent Schema Registry's default; Apicurio's own default is NONE.
DEFAULT_COMPATIBILITY = "BACKWARD"

JVM_OPTIONS = [
    # a registry for tests: start fast, stay small
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseSerialGC",
    "-Xmx256m",
    "-XX:-UsePerfData",
]


def apicurio_home(version: str = APICURIO_VERSION) -> Path:
    """The unpacked distribution of ``version`` (downloaded on first use)."""
    home = cache_dir() / f"apicurio-registry-{version}"
    done = home / ".complete"
    if done.is_file():
        return home
    with locked(f"apicurio-{version}"):
        if done.is_file():
            return home
        if home.exists():
            shutil.rmtree(home)
        with tempfile.TemporaryDirectory(dir=cache_dir()) as work:
            archive = maven_copy(f"io.apicurio:apicurio-registry-app:{version}:tar.gz:all", Path(work))
            unpacked = Path(work) / "app"
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")
            unpacked.rename(home)
        done.write_text(version + "\n")
    return home


def _launch_jar(home: Path) -> Path:
    """3.x ships Quarkus' fast-jar layout (``quarkus-run.jar``), 2.x a ``*-runner.jar``."""
    fast = home / "quarkus-run.jar"
    if fast.is_file():
        return fast
    runners = sorted(home.glob("*-runner.jar"))
    if runners:
        return runners[0]
    raise PeerError(f"{home} holds neither quarkus-run.jar nor a *-runner.jar")


def choose_version() -> tuple[str, Java]:
    """Apicurio 3.x on Java 21+, else 2.6 on Java 17."""
    with contextlib.suppress(PeerError):
        return APICURIO_VERSION, find_java(21)
    return APICURIO_JAVA17_VERSION, find_java(17)


@dataclass
class SchemaRegistry:
    """A running Apicurio Registry on loopback ports; ``url`` is its Confluent API."""

    version: str
    java: Java
    base_dir: Path
    port: int = 0
    management_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    started_in: float = 0.0
    _owns_dir: bool = field(default=False, repr=False)

    @classmethod
    def start(
        cls,
        version: str | None = None,
        *,
        compatibility: str | None = DEFAULT_COMPATIBILITY,
        timeout: float = 180,
        base_dir: Path | None = None,
        attempts: int = 3,
    ) -> SchemaRegistry:
        """Download (once) and start a registry; ready when its API answers.

        ``compatibility`` sets the global compatibility level (``None`` keeps
        Apicurio's default, NONE).
        """
        if version is None:
            version, java = choose_version()
        else:
            java = find_java(21 if int(version.split(".")[0]) >= 3 else 17)
        home = apicurio_home(version)
        owns = base_dir is None
        if base_dir is None:
            base_dir = Path(tempfile.mkdtemp(prefix="cdc-registry-"))
        registry = cls(version, java, base_dir, _owns_dir=owns)
        last = ""
        for _ in range(attempts):
            try:
                registry._launch(home, timeout)
            except PeerError as exc:
                last = str(exc)
                if "in use" not in last and "bind" not in last.lower():
                    registry.destroy()
                    raise
                continue
            if compatibility is not None:
                registry.set_compatibility(compatibility)
            return registry
        registry.destroy()
        raise PeerError(last)

    @property
    def log_path(self) -> Path:
        return self.base_dir / "registry.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The Confluent-compatible API: give it to ``SchemaRegistryClient({"url": ...})``."""
        return self.base_url + CCOMPAT_PATH

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def rss(self) -> int:
        return rss_bytes(self.pid) if self.process else 0

    def _launch(self, home: Path, timeout: float) -> None:
        self.port, self.management_port = free_port(), free_port()
        cds: list[str] = []
        if self.java.major >= 19:
            # class-data sharing archive written by the first run, read by the next ones (~30% faster)
            cds = [
                f"-XX:SharedArchiveFile={home / f'app-java{self.java.major}.jsa'}",
                "-XX:+AutoCreateSharedArchive",
            ]
        command = [
            self.java.java,
            *JVM_OPTIONS,
            *cds,
            "-Dquarkus.http.host=127.0.0.1",
            f"-Dquarkus.http.port={self.port}",
            # health/metrics listen on 0.0.0.0:9000 by default: keep it local and free
            "-Dquarkus.management.host=127.0.0.1",
            f"-Dquarkus.management.port={self.management_port}",
            "-Dquarkus.http.access-log.enabled=false",
            # 20 pooled connections to an in-memory database are 20 idle threads' worth
            "-Dapicurio.datasource.jdbc.initial-size=2",
            "-Dapicurio.datasource.jdbc.min-size=2",
            "-Dquarkus.datasource.jdbc.initial-size=2",
            "-Dquarkus.datasource.jdbc.min-size=2",
            "-jar",
            str(_launch_jar(home)),
        ]
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = began + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PeerError(
                    f"Apicurio Registry {self.version} exited with {self.process.returncode}: "
                    + tail(self.log_path)
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(self.url + "/subjects", timeout=2) as answer,
            ):
                if answer.status == 200:
                    self.started_in = time.monotonic() - began
                    return
            time.sleep(0.1)
        self.stop()
        raise PeerError(f"Apicurio Registry {self.version} not ready after {timeout}s: {tail(self.log_path)}")

    def request(self, method: str, path: str, body: object = None) -> object:
        """One call to the Confluent API (``path`` below ``url``); the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        with urllib.request.urlopen(req, timeout=30) as answer:
            return json.loads(answer.read() or b"null")

    def set_compatibility(self, level: str, subject: str | None = None) -> None:
        path = "/config" if subject is None else f"/config/{subject}"
        self.request("PUT", path, {"compatibility": level})

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def destroy(self) -> None:
        self.stop()
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


#: What Apicurio does differently from Confluent's registry, as seen with the versions above.
REGISTRY_NOTES = """
- default global compatibility is NONE (Confluent: BACKWARD); SchemaRegistry.start sets BACKWARD
- ids are content ids: the same schema under two subjects gets one id (as Confluent); ids are not
  dense (a schema refused by the compatibility rule still consumes one)
- 3.x returns a re-serialized schema text (compact, record-level extra attributes after "fields"),
  keeps every custom attribute (pg.oid, connect.name, pg.name, doc) and logicalType; schemas that
  differ only in whitespace/key order get the same id (as Confluent)
- 2.6 returns the registered text byte for byte and treats a whitespace/key-order variant as a new
  version with a new id
"""
