"""The replication slot as operators see it: its health, a lost slot, failover, heartbeats, `cdc drop`.

A slot pins WAL on the server for as long as it exists. This module watches
what that costs and what can go wrong:

- `slot_health`: ``wal_status`` and ``safe_wal_size`` (PostgreSQL 13+), why it
  was invalidated and since when it is inactive (17+), ``failover`` (17+);
- `unless_lost`, at every session start: a slot the server invalidated
  (``wal_status = 'lost'``, an ``invalidation_reason``), or that failed with
  "requested WAL segment has already been removed", can never stream again.
  ``--on-slot-lost fail`` stops with one line naming cause and fix; ``recreate``
  records the gap (``slot_lost.json``), drops the slot, and the session makes a
  new one and reads the tables again (`cdc.snapshot.gap`);
- `resume_point`: ``offsets.json`` ahead of the slot on another timeline (a
  failover to a standby that lagged) is handled by ``--on-offset-mismatch``;
- `SlotMonitor`: every few seconds while streaming, the slot's health into the
  `Status` (a slot lost meanwhile ends the session as `SlotLost`), and
  ``--heartbeat-query``, which writes to the database so a quiet one advances;
- `drop_connector`: ``cdc drop``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import psycopg
from psycopg import sql

from cdc import control, pg, replication
from cdc.checkpoint import OffsetStore, read_state, write_atomic
from cdc.config import Settings
from cdc.errors import ControlError, SlotLost, SourceError, SourceUnavailable
from cdc.lsn import format_lsn, parse_lsn
from cdc.status import Status

log = logging.getLogger(__name__)

#: Seconds between two looks at the slot while streaming.
SLOT_CHECK_SECONDS: Final = 10.0
#: Seconds between two runs of --heartbeat-query without a --heartbeat-interval.
HEARTBEAT_QUERY_SECONDS: Final = 10.0

#: What each invalidation reason means, for the one-line error.
_REASONS: Final = {
    "wal_removed": "the server removed WAL the slot still needed (it fell behind by more than "
    "max_slot_wal_keep_size{keep})",
    "idle_timeout": "it was inactive for longer than idle_replication_slot_timeout{idle}",
    "rows_removed": "a standby's hot standby conflict removed rows it needed",
    "wal_level_insufficient": "wal_level on the primary dropped below logical",
}


@dataclass(slots=True, frozen=True)
class SlotHealth:
    """One row of ``pg_replication_slots``, with what each server version knows."""

    name: str
    database: str | None
    active: bool
    active_pid: int | None
    restart_lsn: int | None
    confirmed_flush_lsn: int | None
    retained_bytes: int | None  # WAL the slot holds back: current position - restart_lsn
    wal_status: str  # '' before PostgreSQL 13
    safe_wal_size: int | None  # bytes left before it is lost; None without max_slot_wal_keep_size
    invalidation_reason: str  # '' when valid or before PostgreSQL 17 (16: 'conflicting' when it is)
    inactive_since: float | None  # epoch seconds (PostgreSQL 17+), None when active or unknown
    failover: bool

    @property
    def lost(self) -> bool:
        return self.wal_status == "lost" or bool(self.invalidation_reason)


def slot_health(conn: psycopg.Connection[Any], slot: str | None = None) -> list[SlotHealth]:
    """``slot``'s health (every logical slot when None), as far as the server version tells."""
    version = conn.info.server_version
    columns = [
        "slot_name",
        "database",
        "active",
        "active_pid",
        "restart_lsn::text",
        "confirmed_flush_lsn::text",
        "pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
        "ELSE pg_current_wal_lsn() END, restart_lsn)::bigint",
        "wal_status" if version >= 130000 else "''",
        "safe_wal_size" if version >= 130000 else "NULL::bigint",
    ]
    if version >= 170000:
        columns += [
            "coalesce(invalidation_reason, '')",
            "extract(epoch FROM inactive_since)::float8",
            "failover",
        ]
    elif version >= 160000:
        columns += ["CASE WHEN conflicting THEN 'conflicting' ELSE '' END", "NULL::float8", "false"]
    else:
        columns += ["''", "NULL::float8", "false"]
    query = (
        f"SELECT {', '.join(columns)} FROM pg_replication_slots WHERE slot_type = 'logical'"
        + (" AND slot_name = %s" if slot is not None else "")
        + " ORDER BY slot_name"
    )
    rows = pg.query(conn, query, (slot,) if slot is not None else None, doing="reading the replication slots")
    return [
        SlotHealth(
            name=row[0],
            database=row[1],
            active=bool(row[2]),
            active_pid=row[3],
            restart_lsn=_lsn(row[4]),
            confirmed_flush_lsn=_lsn(row[5]),
            retained_bytes=None if row[6] is None else int(row[6]),
            wal_status=row[7] or "",
            safe_wal_size=None if row[8] is None else int(row[8]),
            invalidation_reason=row[9] or "",
            inactive_since=row[10],
            failover=bool(row[11]),
        )
        for row in rows
    ]


def _lsn(text: str | None) -> int | None:
    return parse_lsn(text) if text else None


def _setting(conn: psycopg.Connection[Any], name: str) -> str:
    row = pg.query_one(conn, "SELECT current_setting(%s, true)", (name,))
    return str(row[0]) if row and row[0] is not None else ""


def lost_message(conn: psycopg.Connection[Any], health: SlotHealth | None, slot: str, why: str = "") -> str:
    """The one line that says a slot is lost: why, what is gone, and the way out."""
    reason = health.invalidation_reason if health else ""
    cause = _REASONS.get(reason, "")
    if cause:
        cause = cause.format(
            keep=f" = {_setting(conn, 'max_slot_wal_keep_size')}",
            idle=f" = {_setting(conn, 'idle_replication_slot_timeout')}",
        )
    elif health is not None and health.wal_status == "lost":
        cause = _REASONS["wal_removed"].format(keep=f" = {_setting(conn, 'max_slot_wal_keep_size')}")
    else:
        cause = why or "the server invalidated it"
    since = ""
    if health is not None and health.confirmed_flush_lsn:
        since = f"; changes after {format_lsn(health.confirmed_flush_lsn)} can no longer be streamed"
    return f"replication slot {slot!r} is lost: {cause}{since}; {pg.LOST_SLOT_FIX}"


# -- a lost slot at start-up --------------------------------------------------------------


def _gap_path(settings: Settings) -> Path:
    return settings.instance_dir / "slot_lost.json"


def pending_gap(settings: Settings) -> dict[str, Any] | None:
    """The lost slot this connector is replacing (``slot_lost.json``), until its tables are re-read."""
    data = read_state(
        _gap_path(settings), 1, "delete it to forget the lost slot (the tables are not re-read)"
    )
    if data is None or data.get("slot") != settings.slot:
        return None
    return data


def gap_closed(settings: Settings) -> None:
    """The re-read of the tables is queued: the lost slot's gap is handled."""
    with contextlib.suppress(FileNotFoundError):
        _gap_path(settings).unlink()


def unless_lost(
    conn: psycopg.Connection[Any],
    settings: Settings,
    slot: replication.SlotInfo,
    status: Status,
    known: str = "",
) -> replication.SlotInfo | None:
    """``slot`` when it can stream; None when it was lost and has been dropped to be made again.

    ``known``: the server already said the slot is lost (a failed START_REPLICATION or
    stream) even if the catalog does not show it. Raises `SlotLost` under
    ``--on-slot-lost fail``.
    """
    found = slot_health(conn, slot.name)
    health = found[0] if found else None
    if health is not None:
        status.slot_wal_status = health.wal_status
        status.slot_safe_wal_size = health.safe_wal_size
    if not known and (health is None or not health.lost):
        return slot
    message = lost_message(conn, health, slot.name, known)
    if settings.on_slot_lost != "recreate":
        raise SlotLost(message)
    log.warning(
        "%s. --on-slot-lost recreate: dropping it, creating it again and reading every captured table "
        "again (incremental snapshot) to close the gap",
        message.split("; ")[0],
        extra={"lsn": format_lsn(slot.confirmed_flush_lsn or 0)},
    )
    if pending_gap(settings) is None:
        gap = {
            "version": 1,
            "slot": slot.name,
            "reason": (health.invalidation_reason or health.wal_status) if health else "lost",
            "confirmed_lsn": format_lsn(slot.confirmed_flush_lsn or 0),
            "lost_at": time.time(),
        }
        write_atomic(_gap_path(settings), orjson.dumps(gap))
    drop_slot(conn, slot.name)
    status.slot_wal_status = ""
    return None


def drop_slot(conn: psycopg.Connection[Any], slot: str) -> None:
    with pg.errors(f"dropping replication slot {slot!r}", "drop it as a superuser or a REPLICATION role"):
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    log.info("dropped replication slot %s", slot)


# -- failover ----------------------------------------------------------------------------


def check_failover(conn: psycopg.Connection[Any], settings: Settings) -> None:
    """``--failover-slot`` needs PostgreSQL 17; refused on older servers before anything is created."""
    if not settings.failover_slot:
        return
    version = conn.info.server_version
    if version < 170000:
        raise SourceError(
            f"--failover-slot needs PostgreSQL 17 or newer (the server runs {version // 10000}): "
            "drop --failover-slot or upgrade the server"
        )


def needs_failover(conn: psycopg.Connection[Any], settings: Settings, slot: str) -> bool:
    """An existing slot that ``--failover-slot`` wants marked FAILOVER and is not yet."""
    if not settings.failover_slot:
        return False
    found = slot_health(conn, slot)
    return bool(found) and not found[0].failover


def resume_point(
    settings: Settings,
    store: OffsetStore,
    slot_lsn: int,
    system: replication.SystemInfo,
    database: str,
) -> int:
    """Where to start streaming: the slot's position, or the state directory's when it is ahead.

    ``offsets.json`` is saved before each confirmation, so after a crash it can be a
    little ahead of the slot, on the same timeline: Kafka holds everything up to it,
    and it is used. Ahead of the slot on another timeline (the server was promoted
    from a standby whose slot lagged), or beyond the server's WAL, it describes
    another history: ``--on-offset-mismatch trust-slot`` (default) logs it and
    resumes from the slot (what lies between is sent again: duplicates, never a
    gap), ``fail`` stops with one line.
    """
    saved = store.saved
    if (saved.slot, saved.system_id, saved.database) != (settings.slot, system.system_id, database):
        return slot_lsn
    if saved.lsn <= slot_lsn:
        return slot_lsn
    other_timeline = bool(saved.timeline) and saved.timeline != system.timeline
    beyond = saved.lsn > system.xlogpos
    if not (other_timeline or beyond):
        log.info("resuming at %s from the state directory", format_lsn(saved.lsn))
        return saved.lsn
    why = (
        f"timeline {saved.timeline} there, {system.timeline} on the server: a failover to a standby "
        "whose slot lagged"
        if other_timeline
        else f"the server's WAL ends at {format_lsn(system.xlogpos)}: a restored or different server"
    )
    text = (
        f"offsets.json is at {format_lsn(saved.lsn)}, ahead of slot {settings.slot!r} at "
        f"{format_lsn(slot_lsn)} ({why})"
    )
    if settings.on_offset_mismatch == "fail":
        raise SourceError(
            f"{text}: --on-offset-mismatch fail; start with --on-offset-mismatch trust-slot to resume from "
            "the slot (changes in between are sent again), or check that --dsn names the right server"
        )
    log.warning(
        "%s: trusting the slot (--on-offset-mismatch trust-slot): resuming at %s; changes up to %s are "
        "sent again, and events Kafka got from the old primary after the standby's position may not "
        "exist on this server",
        text, format_lsn(slot_lsn), format_lsn(saved.lsn),
        extra={"lsn": format_lsn(slot_lsn)},
    )  # fmt: skip
    store.forget()
    return slot_lsn


# -- while streaming -------------------------------------------------------------------------


class SlotMonitor:
    """The slot's health into the `Status` every `SLOT_CHECK_SECONDS`, and ``--heartbeat-query``.

    Runs on the stream thread, on the session's catalog connection. A slot
    found lost raises `SlotLost` (the walsender is usually gone first, and the
    reconnect finds it lost at start-up).
    """

    def __init__(self, conn: psycopg.Connection[Any], settings: Settings, status: Status) -> None:
        self.conn = conn
        self.settings = settings
        self.status = status
        self.next_check = 0.0
        self.next_heartbeat = 0.0
        self.failing_since = -60.0

    def tick(self) -> None:
        """Every status interval: the heartbeat query when due, the slot's health when due."""
        now = time.monotonic()
        if self.settings.heartbeat_query and now >= self.next_heartbeat:
            self.next_heartbeat = now + (self.settings.heartbeat_interval or HEARTBEAT_QUERY_SECONDS)
            self.heartbeat()
        if now < self.next_check:
            return
        self.next_check = now + SLOT_CHECK_SECONDS
        found = slot_health(self.conn, self.settings.slot)
        status = self.status
        if not found:
            status.slot_wal_status = ""
            return
        health = found[0]
        if health.wal_status != status.slot_wal_status and health.wal_status in ("unreserved", "lost"):
            log.warning(
                "slot %s: wal_status %s (safe_wal_size %s): the server is about to remove WAL it needs",
                self.settings.slot, health.wal_status, health.safe_wal_size,
            )  # fmt: skip
        status.slot_wal_status = health.wal_status
        status.slot_safe_wal_size = health.safe_wal_size
        if health.lost:
            raise SlotLost(lost_message(self.conn, health, self.settings.slot))

    def heartbeat(self) -> None:
        """Run ``--heartbeat-query``; a refused one is logged (once a minute) and counted, not fatal."""
        try:
            with pg.errors("--heartbeat-query", "fix the query or the role's privileges"):
                self.conn.execute(self.settings.heartbeat_query.encode())
        except SourceError as exc:
            if isinstance(exc, SourceUnavailable):
                raise
            self.status.heartbeat_query_errors += 1
            if time.monotonic() - self.failing_since > 60:
                self.failing_since = time.monotonic()
                log.warning("%s", exc)
            return
        self.status.last_heartbeat_at = time.time()


def check_heartbeat_query(conn: psycopg.Connection[Any], settings: Settings) -> None:
    """Run ``--heartbeat-query`` once in a transaction rolled back: refused at start, not every interval."""
    if not settings.heartbeat_query:
        return
    with (
        pg.errors("--heartbeat-query", "fix the query or grant the role what it needs"),
        conn.transaction(force_rollback=True),
    ):
        conn.execute(settings.heartbeat_query.encode())


# -- cdc drop --------------------------------------------------------------------------------


def drop_connector(settings: Settings, keep_publication: bool, stop_timeout: float = 60.0) -> list[str]:
    """Stop the connector if it runs, drop its slot and (if cdc made it) its publication, and its state.

    Refuses, before dropping anything, while another process holds the slot.
    Returns what was done, one line each.
    """
    s = settings
    done: list[str] = []
    directory = s.instance_dir
    with pg.connect(s.dsn, f"cdc-{s.name}-drop") as conn:
        slot = replication.find_slot(conn, s.slot)
        pid = control.running_pid(directory)
        if slot is not None and slot.active and (pid is None or pid <= 0):
            raise SourceError(
                f"slot {s.slot!r} is in use by process {slot.active_pid}, which is not connector {s.name!r} "
                "(state dir " + str(s.state_dir) + "): stop that reader first"
            )
        if pid is not None and pid > 0:
            control.request_stop(directory, s.name, stop_timeout)
            done.append(f"stopped connector {s.name} (pid {pid})")
        if slot is not None:
            deadline = time.monotonic() + 10
            while slot is not None and slot.active and time.monotonic() < deadline:
                time.sleep(0.1)  # the walsender lets go a moment after its client
                slot = replication.find_slot(conn, s.slot)
            if slot is not None and slot.active:
                raise SourceError(
                    f"slot {s.slot!r} is in use by process {slot.active_pid}: stop that reader first"
                )
        with control.InstanceLock(directory, s.name):  # no `cdc start` of this name meanwhile
            if slot is not None:
                drop_slot(conn, s.slot)
                done.append(f"dropped replication slot {s.slot}")
            else:
                done.append(f"no replication slot {s.slot}")
            done.append(_drop_publication(conn, s.publication, keep_publication))
            shutil.rmtree(directory, ignore_errors=True)
    if directory.exists():
        raise ControlError(f"cannot remove the state directory {directory}: remove it by hand")
    done.append(f"removed state directory {directory}")
    return done


def _drop_publication(conn: psycopg.Connection[Any], publication: str, keep: bool) -> str:
    row = pg.query_one(
        conn,
        "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s",
        (publication,),
    )
    if row is None:
        return f"no publication {publication}"
    if keep:
        return f"kept publication {publication} (--keep-publication)"
    if row[0] != replication.MANAGED_PUBLICATION:
        return f"kept publication {publication}: cdc did not create it"
    with pg.errors(f"dropping publication {publication!r}", "drop it as its owner"):
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication)))
    return f"dropped publication {publication}"
