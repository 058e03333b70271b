"""WAL positions as the server sees them, read over a plain connection of their own."""

from __future__ import annotations

from typing import Any

import psycopg

from cdc.lsn import parse_lsn


def scalar(dsn: str, query: str, params: Any = None) -> Any:
    """The first column of the first row of ``query`` (None without a row), on a new connection."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def current_wal(dsn: str) -> int:
    """``pg_current_wal_lsn()``: where the server has written WAL up to."""
    return parse_lsn(str(scalar(dsn, "SELECT pg_current_wal_lsn()::text")))


def slot_confirmed(dsn: str, slot: str) -> int:
    """The slot's ``confirmed_flush_lsn`` (0 when the slot does not exist or confirmed nothing)."""
    text = scalar(
        dsn, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    )
    return parse_lsn(text) if text else 0


def slot_active_pid(dsn: str, slot: str) -> int | None:
    """The walsender holding the slot, or None when no process is streaming from it."""
    pid = scalar(dsn, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    return int(pid) if pid is not None else None
