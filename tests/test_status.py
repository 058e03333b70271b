"""A connector says how it ended, and a refused start leaves nothing behind.

`cdc status` exits 0 while the connector runs, 1 when it ended on an error
(``failed``, with the error and when) or died unannounced (``killed``), 3 when
it stopped cleanly or never ran; an unfinished snapshot shows as
``interrupted``, not ``running``.
"""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fix_servers import BrokerHandle, TestDb
from tests.support import cdc, error_line, wait_until


def status(state: Path, name: str) -> tuple[int, dict[str, Any]]:
    proc = cdc("status", "--name", name, "--state-dir", str(state), "--json")
    info: dict[str, Any] = orjson.loads(proc.stdout)
    return proc.returncode, info


def start_args(db: TestDb, bootstrap: str, prefix: str, state: Path, name: str, *extra: str) -> list[str]:
    return [
        "start", "--bootstrap-servers", bootstrap, "--name", name, "--topic-prefix", prefix,
        "--state-dir", str(state), "--format", "json", "--status-interval", "0.2", *extra,
    ]  # fmt: skip


def dsn_env(db: TestDb) -> dict[str, str]:
    return {"CDC_DSN": db.dsn}  # never on a command line


def test_a_failed_start_shows_failed_with_its_error(
    db: TestDb, broker: BrokerHandle, prefix: str, tmp_path: Path
) -> None:
    name = "f" + secrets.token_hex(3)
    args = start_args(db, broker.bootstrap_servers, prefix, tmp_path, name, "--tables", "public.nowhere")
    line = error_line(cdc(*args, env=dsn_env(db)))
    assert "public.nowhere does not exist" in line
    code, info = status(tmp_path, name)
    assert code == 1
    assert info["state"] == "failed" and info["pid"] is None
    assert "public.nowhere does not exist" in info["last_error"]
    assert info["ended_at"] > 0
    human = cdc("status", "--name", name, "--state-dir", str(tmp_path))
    assert human.returncode == 1 and f"{name}: failed" in human.stdout and "nowhere" in human.stdout


def test_a_detached_connector_that_dies_in_its_snapshot_shows_failed(
    db: TestDb, broker: BrokerHandle, prefix: str, tmp_path: Path
) -> None:
    """The case of the issue: detached, the snapshot fails for good; status must not say stopped."""
    db.execute(
        "CREATE TABLE blobs (id int PRIMARY KEY, body text);"
        "INSERT INTO blobs SELECT g, repeat(md5(g::text), 200) FROM generate_series(1, 50) g"
    )
    name = "d" + secrets.token_hex(3)
    args = start_args(
        db, broker.bootstrap_servers, prefix, tmp_path, name, "--snapshot", "initial", "--producer",
        "confluent", "--producer-config", "message.max.bytes=2000", "--tables", "public.blobs",
    )  # fmt: skip
    started = cdc(*args, "--detach", env=dsn_env(db))
    # it may die before `--detach` returns (then start says so) or just after
    if started.returncode == 0:
        wait_until(lambda: status(tmp_path, name)[0] != 0, timeout=60, message="the connector to end")
    else:
        assert "exited at start" in error_line(started)
    code, info = status(tmp_path, name)
    assert code == 1 and info["state"] == "failed", info
    assert "too large" in info["last_error"].lower(), info["last_error"]
    assert info["snapshot"]["phase"] == "interrupted"


def test_a_killed_connector_shows_killed(
    db: TestDb, broker: BrokerHandle, prefix: str, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    name = "k" + secrets.token_hex(3)
    args = start_args(db, broker.bootstrap_servers, prefix, tmp_path, name, "--snapshot", "never")
    started = cdc(*args, "--detach", env=dsn_env(db))
    assert started.returncode == 0, started.stderr
    code, info = status(tmp_path, name)
    assert code == 0 and info["state"] == "running"
    os.kill(info["pid"], signal.SIGKILL)
    wait_until(lambda: status(tmp_path, name)[1]["pid"] is None, timeout=30, message="the process to die")
    code, info = status(tmp_path, name)
    assert code == 1 and info["state"] == "killed", info
    # a clean stop after a restart: stopped, exit 3
    assert cdc(*args, "--detach", env=dsn_env(db)).returncode == 0
    assert cdc("stop", "--name", name, "--state-dir", str(tmp_path)).returncode == 0
    code, info = status(tmp_path, name)
    assert code == 3 and info["state"] == "stopped" and info["last_error"] == ""


def _leftovers(db: TestDb, name: str) -> tuple[int, int]:
    publications = int(db.scalar("SELECT count(*) FROM pg_publication WHERE pubname = %s", (f"cdc_{name}",)))
    slots = int(db.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (f"cdc_{name}",)))
    return publications, slots


@pytest.mark.parametrize(
    "failure",
    ["broker unreachable", "table missing", "role lacks replication", "foreign publication lacks a table"],
)
def test_a_refused_start_creates_nothing(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, tmp_path: Path, failure: str
) -> None:
    """Every precondition (Postgres and the broker) is checked before the publication or the slot
    is made: a refused start prints one line and leaves nothing behind."""
    db = db_latest
    db.execute("CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)")
    name = "s" + secrets.token_hex(3)
    bootstrap, tables, env = broker.bootstrap_servers, "public.items", dsn_env(db)
    expected = ""
    if failure == "broker unreachable":
        bootstrap, expected = "127.0.0.1:1", "cannot reach the broker"
    elif failure == "table missing":
        tables, expected = "public.items,public.nowhere", "public.nowhere does not exist"
    elif failure == "role lacks replication":
        role = "r" + secrets.token_hex(3)
        db.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT SELECT ON items TO {role}")
        env = {"CDC_DSN": db.server.dsn(db.name, user=role, password="pw")}
        expected = "lacks REPLICATION"
    else:
        db.execute(f"CREATE PUBLICATION cdc_{name} FOR TABLE other")
        expected = "does not publish public.items"
    before = _leftovers(db, name)
    args = start_args(db, bootstrap, prefix, tmp_path, name, "--tables", tables, "--snapshot", "initial")
    line = error_line(cdc(*args, env=env))
    assert expected in line, line
    assert _leftovers(db, name) == before
    assert not (tmp_path / name / "offsets.json").exists()
