"""The Postgres boundary: connections with our output settings, and psycopg errors as `cdc.errors`.

Every catalog query, snapshot read and replication command of cdc goes
through here, so that a server refusal is always a `SourceError` whose
message says what to change, and a lost connection always a
`SourceUnavailable` that the connector retries: never a psycopg traceback.
Passwords are stripped from every message.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc import redact
from cdc.errors import SlotLost, SourceError, SourceUnavailable

#: Session settings that make the server's text output of values unambiguous
#: for `cdc.pgtypes`: UTC offsets, ISO dates and intervals, exact floats, hex bytea.
OUTPUT_SETTINGS: Final[dict[str, str]] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "client_encoding": "UTF8",
}

Query = str | sql.SQL | sql.Composed

#: The usual fix when a catalog query is refused.
CHECK_PRIVILEGES: Final = "check the role's privileges"


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced, safe for logs and messages."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable dsn>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


def session_conninfo(dsn: str, application_name: str, **extra: str) -> str:
    """``dsn`` plus our output settings (appended to any ``options`` it has)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise SourceError(f"invalid dsn: {strip_password(str(exc), dsn)}; fix --dsn") from None
    redact.remember(str(params.get("password") or ""))
    options = " ".join(f"-c {k}={v.replace(' ', '')}" for k, v in OUTPUT_SETTINGS.items())
    if params.get("options"):
        options = f"{params['options']} {options}"
    params.update(options=options, **extra)
    params.setdefault("application_name", application_name)
    params.setdefault("connect_timeout", "10")
    return make_conninfo("", **params)


def strip_password(text: str, dsn: str) -> str:
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    return text.replace(str(password), "***") if password else text


def connect_error(exc: Exception, dsn: str) -> SourceError:
    """Why a connection could not be opened: a refusal to fix, or a server to wait for."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # libpq tries every address of a host name (::1, then 127.0.0.1): the attempt that reached
    # the server says why it failed; a refused one before it does not
    answered = [line for line in lines if "failed:" in line and not _UNREACHED.search(line)]
    text = (answered or lines or [repr(exc)])[0]
    # libpq says 'connection to server at "h", port p failed: FATAL:  <reason>': keep the reason
    text = re.sub(r'^connection to server at "[^"]*", port \d+ failed: (FATAL:\s+)?', "", text)
    text = strip_password(text, dsn)
    where = redact_dsn(dsn) or "libpq's PG* variables"
    if tls := _tls_problem(text):
        return SourceError(f"cannot connect to postgres ({where}): {text}; {tls}")
    if "password authentication failed" in text or "no password supplied" in text:
        return SourceError(f"cannot connect to postgres ({where}): {text}; check the user and password")
    if "not permitted to log in" in text or "not allowed to log in" in text:
        return SourceError(
            f"cannot connect to postgres ({where}): {text}; the role lacks LOGIN: ALTER ROLE ... LOGIN"
        )
    if "database" in text and "does not exist" in text:
        return SourceError(f"cannot connect to postgres ({where}): {text}; fix dbname in --dsn")
    if "max_wal_senders" in text and "exceeds" in text:
        return SourceUnavailable(
            f"cannot connect to postgres ({where}): {text}: every walsender is taken; stop another "
            "replication client or raise max_wal_senders (and restart postgres)"
        )
    if "too many clients" in text or "remaining connection slots are reserved" in text:
        return SourceUnavailable(
            f"cannot connect to postgres ({where}): {text}: close idle connections or raise max_connections"
        )
    if "pg_hba.conf" in text:
        return SourceError(f"cannot connect to postgres ({where}): {text}; allow it in pg_hba.conf")
    return SourceUnavailable(f"cannot connect to postgres ({where}): {text}; is the server running?")


_UNREACHED: Final = re.compile(
    r"Connection refused|No route to host|Network is unreachable|timeout expired|Cannot assign requested"
)

#: libpq's words for a TLS failure -> what to change (sslmode, sslrootcert: see libpq's docs).
_TLS_FIXES: Final = (
    ("certificate verify failed", "the server's certificate is not signed by the CA in sslrootcert: "
     "point sslrootcert at the CA that signed it"),
    ("does not match host name", "connect with a host name the server's certificate names, "
     "or use sslmode=verify-ca"),
    ("root certificate file", "fix sslrootcert (a PEM file of the CA), or use sslrootcert=system"),
    ("server does not support SSL", "turn ssl on in the server, or lower sslmode"),
    ("certificate", "check the sslcert, sslkey and sslrootcert files"),
    ("private key", "check sslkey (and its password, sslpassword)"),
)  # fmt: skip


def _tls_problem(text: str) -> str:
    """The fix for a TLS failure that libpq reported in ``text``; empty when it is not one."""
    for words, fix in _TLS_FIXES:
        if words in text:
            return fix
    return ""


def connect(dsn: str, application_name: str = "cdc", autocommit: bool = True) -> psycopg.Connection[Any]:
    """A normal connection with the output settings: autocommit for catalog work, or not (a sink's
    target, which commits what it applied with its position)."""
    try:
        return psycopg.connect(session_conninfo(dsn, application_name), autocommit=autocommit)
    except psycopg.Error as exc:
        raise connect_error(exc, dsn) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def errors(
    doing: str, fix: str = CHECK_PRIVILEGES, retriable: frozenset[str] = frozenset()
) -> Iterator[None]:
    """psycopg errors inside become ours: "``doing`` failed: <server message>; ``fix``".

    A lost connection (and anything else the server reports as operational:
    shutdown, cancel, lock timeout) is `SourceUnavailable`, retried by the
    connector, and so is an error whose SQLSTATE is in ``retriable``; any
    other refusal is `SourceError`.
    """
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise SourceUnavailable(f"{doing}: connection lost: {_first_line(exc)}") from None
    except psycopg.Error as exc:
        message = exc.diag.message_primary or _first_line(exc)
        if exc.sqlstate in retriable:
            raise SourceUnavailable(f"{doing} failed: {message}") from None
        raise SourceError(f"{doing} failed: {message}; {fix}") from None


def query(
    conn: psycopg.Connection[Any],
    statement: Query,
    params: Any = None,
    *,
    doing: str = "catalog query",
    fix: str = CHECK_PRIVILEGES,
) -> list[tuple[Any, ...]]:
    """Every row of ``statement``, with errors translated by `errors`."""
    with errors(doing, fix):
        return conn.execute(statement, params).fetchall()


def query_one(
    conn: psycopg.Connection[Any],
    statement: Query,
    params: Any = None,
    *,
    doing: str = "catalog query",
    fix: str = CHECK_PRIVILEGES,
) -> tuple[Any, ...] | None:
    """The first row of ``statement`` (None when there is none), errors translated by `errors`."""
    with errors(doing, fix):
        return conn.execute(statement, params).fetchone()


#: How the server says that a slot can never stream again (PostgreSQL 13 to 18 wordings): it was
#: invalidated (WAL removed past max_slot_wal_keep_size, idle timeout, a conflict on a standby),
#: or the WAL it needs is gone.
_SLOT_LOST: Final = (
    "has already been removed",
    "can no longer get changes from replication slot",
    "can no longer access replication slot",
    "cannot read from logical replication slot",
    "has been invalidated",
)

#: The way out of a lost slot, ending every `SlotLost` message.
LOST_SLOT_FIX: Final = (
    "start with --on-slot-lost recreate to replace the slot and read the tables again (or `cdc drop` "
    "the connector); raise max_slot_wal_keep_size so that it does not recur"
)


def is_slot_lost(message: str) -> bool:
    """Does this server message mean the slot can never stream again?"""
    return any(hint in message for hint in _SLOT_LOST)


def command_error(verb: str, message: str, sqlstate: str) -> SourceError:
    """A replication command (libpq level) the server refused, by SQLSTATE."""
    if is_slot_lost(message):
        return SlotLost(f"{verb} failed: the replication slot is lost: {message}; {LOST_SLOT_FIX}")
    if sqlstate == "55006":  # object_in_use
        return SourceError(f"{message}: another connector reads this slot; stop it or choose another --slot")
    if sqlstate == "53400":  # configuration_limit_exceeded
        return SourceError(f"{message}: drop an unused slot or raise max_replication_slots")
    if sqlstate == "42501":  # insufficient_privilege
        return SourceError(f"{message}: grant the role REPLICATION (ALTER ROLE ... REPLICATION)")
    if sqlstate == "42710":  # duplicate_object
        return SourceError(f"{message}: the slot already exists; reuse it or choose another --slot")
    if sqlstate.startswith(("08", "57")) or not sqlstate:  # connection exception, operator intervention
        return SourceUnavailable(f"{verb} failed: {message}")
    return SourceError(f"{verb} failed: {message}")
