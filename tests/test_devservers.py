"""The server launchers: the copy of a Postgres build for an account that cannot reach the venv,
and the ports servers start and restart on."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import pytest

from cdc.devservers import PgInstall, copy_install, server_account
from cdc.devservers.process import _ephemeral_low, free_ports, wait_for_port
from cdc.devservers.tansu import Broker
from tests.fix_servers import INSTALL_ERROR, PG_INSTALLS

# the Postgres builds and a Tansu broker are what these tests are about
pytestmark = pytest.mark.servers


# Without a build, one case that fails with the reason, rather than an empty (skipped) parameter set.
@pytest.mark.parametrize(
    "install",
    [*PG_INSTALLS] or [None],
    ids=[f"pg{i.major}-{i.origin}" for i in PG_INSTALLS] or ["pg-missing"],
)
def test_copied_install_runs_as_the_server_account(install: PgInstall | None) -> None:
    """A venv in a mode-700 directory (mktemp -d, a root home) is copied under /tmp: the copy must
    find its own libraries (auditwheel's RPATH $ORIGIN/../../../<package>.libs) and run as the
    account the server runs as."""
    if install is None:
        pytest.fail(INSTALL_ERROR, pytrace=False)
    copy = copy_install(install)
    assert copy.bin_dir != install.bin_dir
    account = server_account()
    for tool in ("postgres", "initdb", "pg_ctl", "pg_recvlogical"):
        result = subprocess.run(
            [copy.tool(tool), "--version"],
            capture_output=True,
            text=True,
            user=account.uid,
            group=account.gid,
            extra_groups=account.extra_groups,
            check=False,
        )
        assert result.returncode == 0 and str(install.major) in result.stdout, f"{tool}: {result.stderr}"


def test_free_ports_come_from_below_the_ephemeral_range() -> None:
    """A server's port must not be one the kernel may give an outgoing connection while the server
    restarts: the ports picked lie below ``ip_local_port_range`` and are distinct and bindable."""
    low = _ephemeral_low()
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(10_000 <= port < low for port in ports), (ports, low)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))


def test_a_restarted_server_waits_for_its_port_rather_than_moving(tmp_path: Path) -> None:
    """Its clients know the old port: a restart that finds it held (here for 2 s by a bound socket,
    in CI by the local port of some connection) must come back on it, not on a new one."""
    broker = Broker.create(tmp_path / "tansu")
    broker.start()
    try:
        port = broker.port
        broker.stop()
        holder = socket.socket()
        holder.bind(("127.0.0.1", port))
        release = threading.Timer(2.0, holder.close)
        release.start()
        broker.start()
        release.join()
        assert broker.port == port
        assert wait_for_port(port, 5), f"nothing serves port {port}; log: {broker.log_path}"
        assert "in use" in broker.log_path.read_text().lower(), "the port was never held: nothing tested"
    finally:
        broker.destroy()
