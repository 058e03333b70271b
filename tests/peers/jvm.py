"""Java peers for the tests: finding a JDK, resolving jars from Maven Central into a cache.

Everything a peer needs is fetched with the ordinary Maven client (``mvn``) from
Maven Central into ``~/.cache/cdc/peers`` (``CDC_PEERS_CACHE`` overrides it) and
reused across runs. A download happens once per version, under a file lock, so
two test sessions do not resolve the same thing at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.memory import rss_kb

JVM_DIR = Path("/usr/lib/jvm")


class PeerError(RuntimeError):
    """A peer could not be installed or started; the message says why."""


def cache_dir() -> Path:
    root = os.environ.get("CDC_PEERS_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "cdc" / "peers"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Hold an exclusive lock named ``name`` in the cache (one installer at a time)."""
    lock_path = cache_dir() / f".{name}.lock"
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- Java -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Java:
    """A JDK (or JRE) home and its feature version."""

    home: Path
    major: int

    @property
    def java(self) -> str:
        return str(self.home / "bin" / "java")

    @property
    def javac(self) -> str:
        path = self.home / "bin" / "javac"
        if not path.is_file():
            raise PeerError(f"{self.home} has no javac (a JDK is needed, not a JRE)")
        return str(path)


def _release_major(home: Path) -> int | None:
    """The feature version from ``$JAVA_HOME/release`` (``JAVA_VERSION="17.0.15"``)."""
    with contextlib.suppress(OSError):
        match = re.search(r'^JAVA_VERSION="(\d+)', (home / "release").read_text(), re.MULTILINE)
        if match:
            return int(match.group(1))
    java = home / "bin" / "java"
    if not java.is_file():
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
        match = re.search(r'version "(\d+)', out)
        if match:
            return int(match.group(1))
    return None


def _candidate_homes() -> list[Path]:
    homes: list[Path] = []
    for var in ("CDC_PEERS_JAVA_HOME", "JAVA_HOME"):
        value = os.environ.get(var)
        if value:
            homes.append(Path(value))
    on_path = shutil.which("java")
    if on_path:
        homes.append(Path(os.path.realpath(on_path)).parent.parent)
    if JVM_DIR.is_dir():
        homes += sorted(p for p in JVM_DIR.iterdir() if p.is_dir() and not p.is_symlink())
    unique: list[Path] = []
    for home in homes:
        if home.resolve() not in [u.resolve() for u in unique]:
            unique.append(home)
    return unique


def find_java(min_major: int = 17, max_major: int | None = None) -> Java:
    """The first JDK in order (``CDC_PEERS_JAVA_HOME``, ``JAVA_HOME``, ``java`` on PATH,
    ``/usr/lib/jvm/*``) whose version is in ``[min_major, max_major]``."""
    seen: list[str] = []
    for home in _candidate_homes():
        major = _release_major(home)
        if major is None:
            continue
        seen.append(f"{home} ({major})")
        if major >= min_major and (max_major is None or major <= max_major):
            return Java(home, major)
    wanted = f"Java {min_major}+" if max_major is None else f"Java {min_major}..{max_major}"
    raise PeerError(
        f"no {wanted} found among {', '.join(seen) or 'nothing'}; "
        "install one (apt-get install openjdk-17-jdk-headless) or set CDC_PEERS_JAVA_HOME"
    )


# -- Maven ----------------------------------------------------------------------------


def _mvn(args: Sequence[str], cwd: Path, timeout: float) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PeerError("mvn (Maven) is not on PATH: apt-get install maven")
    try:
        done = subprocess.run(
            [mvn, "-B", "-q", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerError(
            f"mvn {args[0]} took more than {timeout:.0f}s (no answer from the registry?)"
        ) from exc
    if done.returncode != 0:
        lines = [ln for ln in (done.stdout + done.stderr).splitlines() if "ERROR" in ln][:5]
        raise PeerError(f"mvn {args[0]} failed: " + (" | ".join(lines) or done.stdout[-2000:]))


def maven_copy(coordinate: str, dest: Path, timeout: float = 900) -> Path:
    """Download one artifact (``group:artifact:version[:type[:classifier]]``) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        _mvn(
            [
                "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy",
                f"-Dartifact={coordinate}",
                f"-DoutputDirectory={dest}",
            ],
            Path(work),
            timeout,
        )
    parts = coordinate.split(":")
    artifact, version = parts[1], parts[2]
    kind = parts[3] if len(parts) > 3 else "jar"
    classifier = f"-{parts[4]}" if len(parts) > 4 else ""
    path = dest / f"{artifact}-{version}{classifier}.{kind}"
    if not path.is_file():
        raise PeerError(f"mvn reported success but {path} is missing")
    return path


def maven_classpath(dependencies: Sequence[str], dest: Path, timeout: float = 900) -> list[Path]:
    """Resolve ``group:artifact:version`` coordinates with their runtime dependencies into
    ``dest`` (a generated pom, ``dependency:copy-dependencies``); return the jars."""
    dest.mkdir(parents=True, exist_ok=True)
    template = (
        "<dependency><groupId>{}</groupId><artifactId>{}</artifactId><version>{}</version></dependency>"
    )
    deps = "\n".join("    " + template.format(*coordinate.split(":")) for coordinate in dependencies)
    pom = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>cdc.tests</groupId><artifactId>peer</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
</project>
"""
    (dest / "pom.xml").write_text(pom)
    lib = dest / "lib"
    if lib.exists():
        shutil.rmtree(lib)
    _mvn(
        [
            "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies",
            f"-DoutputDirectory={lib}",
            "-DincludeScope=runtime",
        ],
        dest,
        timeout,
    )
    return sorted(lib.glob("*.jar"))


# -- processes ------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 once it is gone)."""
    with contextlib.suppress(OSError):
        return rss_kb(pid)[0] * 1024
    return 0


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaps the child."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
