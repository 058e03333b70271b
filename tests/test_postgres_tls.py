"""Postgres over TLS: a cluster with ``ssl=on`` and a certificate for ``localhost`` from a test CA.

``sslmode=verify-full`` with that CA streams (the catalog connection and the
walsender both encrypted); a root certificate of another CA, or a host name
the certificate does not carry, ends ``cdc start`` with one line naming the
cause and the setting to fix, nothing confirmed.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc.devservers import PostgresServer, TestCA, TlsUnavailable
from cdc.errors import ServerError
from tests.fix_servers import PG_INSTALLS, BrokerHandle, TestDb, new_db
from tests.pipeline import settings_for, wait_caught_up
from tests.support import cdc, error_line, running


class TlsPostgres:
    def __init__(self, server: PostgresServer, ca: TestCA, other_ca: TestCA) -> None:
        self.server = server
        self.ca = ca
        self.other_ca = other_ca  # signed nothing the server has

    def dsn(self, dbname: str, root: TestCA | None = None, host: str = "localhost") -> str:
        return self.server.dsn(
            dbname, host=host, sslmode="verify-full", sslrootcert=str((root or self.ca).cert_path)
        )


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[TlsPostgres]:
    if not PG_INSTALLS:
        pytest.skip("no postgres server binaries")
    base = Path(tempfile.mkdtemp(prefix="cdc-pgtls-"))
    base.chmod(0o711)  # the server's account (under root, not this one) goes through to its directory
    try:
        ca = TestCA.create(base / "ca")
        other = TestCA.create(base / "other-ca", "another test CA")
    except TlsUnavailable as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(str(exc))
    certificate = ca.issue("server", ("localhost",))
    server, refusals = None, []
    for install in PG_INSTALLS:  # newest first; a server wheel may be built without SSL
        candidate = PostgresServer.create(install, base / f"pg{install.major}", settings={"ssl": "on"})
        # the server's account must own its key (and Postgres refuses a key others can read)
        for source, setting in (
            (certificate.cert_path, "ssl_cert_file"),
            (certificate.key_path, "ssl_key_file"),
        ):
            target = candidate.base_dir / source.name
            shutil.copy(source, target)
            candidate.account.chown(target)
            target.chmod(0o600)
            candidate.settings[setting] = str(target)
        try:
            candidate.start()
        except ServerError as exc:
            candidate.destroy()
            refusals.append(f"postgres {install.major} ({install.origin}): {exc}")
            if "SSL is not supported by this build" in str(exc):
                continue
            break
        server = candidate
        break
    if server is None:
        shutil.rmtree(base, ignore_errors=True)
        if all("SSL is not supported" in refusal for refusal in refusals):
            pytest.skip(
                "no postgres build here supports SSL: " + "; ".join(r.split(":")[0] for r in refusals)
            )
        pytest.fail(refusals[-1], pytrace=False)
    yield TlsPostgres(server, ca, other)
    server.destroy()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def tls_db(tls_postgres: TlsPostgres) -> Iterator[TestDb]:
    db = new_db(tls_postgres.server)
    yield db
    db.drop()


def test_verify_full_streams(
    tls_postgres: TlsPostgres, tls_db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    tls_db.execute("CREATE TABLE public.t (id int PRIMARY KEY)")
    dsn = tls_postgres.dsn(tls_db.name)
    settings = settings_for(tls_db, broker.bootstrap_servers, prefix, state_dir, dsn=dsn, tables=["public.t"])
    with running(settings) as run:
        tls_db.execute("INSERT INTO public.t SELECT generate_series(1, 10)")
        wait_caught_up(tls_db, run)
        encrypted = tls_db.execute(
            "SELECT s.ssl, a.backend_type FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE a.application_name = %s",
            (f"cdc-{settings.name}",),
        )
    assert {backend for _, backend in encrypted} == {"client backend", "walsender"}
    assert all(ssl for ssl, _ in encrypted), encrypted
    assert run.connector.status.events_total == 10


def refused(tls_db: TestDb, dsn: str, state_dir: Path) -> str:
    tls_db.execute("CREATE TABLE IF NOT EXISTS public.t (id int PRIMARY KEY)")
    name = "c" + secrets.token_hex(4)
    proc = cdc("start", "--state-dir", str(state_dir), "--name", name, "--bootstrap-servers", "x:1", dsn=dsn)
    line = error_line(proc)
    assert proc.returncode == 1
    assert tls_db.execute("SELECT 1 FROM pg_replication_slots WHERE database = current_database()") == []
    assert tls_db.server.password not in proc.stdout + proc.stderr
    return line


def test_a_wrong_root_certificate_is_one_line(
    tls_postgres: TlsPostgres, tls_db: TestDb, state_dir: Path
) -> None:
    line = refused(tls_db, tls_postgres.dsn(tls_db.name, root=tls_postgres.other_ca), state_dir)
    assert "certificate verify failed" in line, line
    assert "point sslrootcert at the CA that signed it" in line, line


def test_a_host_name_the_certificate_lacks_is_one_line(
    tls_postgres: TlsPostgres, tls_db: TestDb, state_dir: Path
) -> None:
    line = refused(tls_db, tls_postgres.dsn(tls_db.name, host="127.0.0.1"), state_dir)
    assert "does not match host name" in line, line
    assert "connect with a host name the server's certificate names" in line, line


def test_a_missing_root_certificate_file_is_one_line(
    tls_postgres: TlsPostgres, tls_db: TestDb, state_dir: Path, tmp_path: Path
) -> None:
    dsn = tls_postgres.dsn(tls_db.name).replace(str(tls_postgres.ca.cert_path), str(tmp_path / "nope.pem"))
    line = refused(tls_db, dsn, state_dir)
    assert "root certificate file" in line and "fix sslrootcert" in line, line
