"""Secrets kept out of everything cdc prints or writes: error lines, logs, status and state files.

Two defences, both here:

- Settings whose *name* says they hold a secret (`is_secret_key`: ``password``,
  ``sasl.password``, ``ssl.key.password``, ``sasl.jaas.config``,
  ``sasl.oauthbearer.client.secret``, ...) are shown as ``***``
  (`redact_pairs`), and cdc's own messages never quote their values.
- Every secret *value* cdc reads (the dsn's password, the values of those
  settings) is remembered in this process (`remember`), and `redact` replaces
  it wherever it appears. That catches what cdc does not write itself: a
  client library's message that echoes a value, a debug log of a request. The
  log handlers (`install`), the CLI's error line and the status file pass their
  text through it.

Values shorter than `MIN_LENGTH` are not remembered: replacing every ``kafka``
or ``admin`` in every message would hide more than it protects (such a
password is still never printed by cdc itself, whose messages go by the key).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final
from urllib.parse import unquote, urlsplit

MASK: Final = "***"
MIN_LENGTH: Final = 8

#: A setting whose name matches holds a secret (Kafka's dotted keys, kafka-python's, libpq's).
SECRET_KEY: Final = re.compile(
    r"password|passwd|secret|jaas|token|credential|private|(^|[._])key\.pem$", re.I
)

_values: set[str] = set()
_ordered: list[str] = []  # longest first, so that a secret containing another is replaced whole
_lock = threading.Lock()


def is_secret_key(key: str) -> bool:
    return SECRET_KEY.search(key) is not None


def remember(value: str | None) -> None:
    """From now on, `redact` hides ``value`` (and its percent-decoded form) in this process."""
    if not value:
        return
    with _lock:
        for form in {value, unquote(value)}:
            if len(form) >= MIN_LENGTH and form not in _values:
                _values.add(form)
                _ordered.append(form)
        _ordered.sort(key=len, reverse=True)


def remember_pairs(pairs: Mapping[str, object]) -> None:
    """Remember the values of the secret keys among ``pairs``."""
    for key, value in pairs.items():
        if is_secret_key(key) and isinstance(value, str):
            remember(value)


def redact(text: str) -> str:
    """``text`` with every remembered secret replaced by ``***``."""
    for value in _ordered:
        if value in text:
            text = text.replace(value, MASK)
    return text


def redact_pairs(pairs: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``pairs`` showing ``***`` for the values of secret keys."""
    return {key: MASK if is_secret_key(key) else value for key, value in pairs.items()}


def redact_tree(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with `redact` applied to every string in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_tree(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(item) for item in value]
    return value


# -- libpq connection strings (parsed here, without psycopg: `cdc status` must not load it) -------

_CONNINFO_PAIR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)*)")


def dsn_password(dsn: str) -> str | None:
    """The password in a libpq connection string (``key=value`` or URI), or None."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        found = unquote(parts.password) if parts.password else None
        for pair in parts.query.split("&"):
            key, _, value = pair.partition("=")
            if key == "password":
                found = unquote(value)
        return found
    found = None
    position = 0
    while match := _CONNINFO_PAIR.match(dsn, position):
        if match.end() == position:
            break
        position = match.end()
        key, raw = match.groups()
        if raw.startswith("'"):
            raw = raw[1:-1]
        if key == "password":
            found = re.sub(r"\\(.)", r"\1", raw)
    return found


def remember_dsn(dsn: str) -> None:
    """Remember the password of ``dsn`` (both as written and unescaped)."""
    remember(dsn_password(dsn))


# -- where the text goes out ------------------------------------------------------------------------


class RedactingFilter(logging.Filter):
    """Renders a record's message (and traceback) and redacts it, before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _ordered:
            record.msg = redact(record.getMessage())
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
        return True


_FILTER = RedactingFilter()


def _excepthook(
    kind: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:  # pragma: no cover - runs at interpreter exit
    sys.stderr.write(redact("".join(traceback.format_exception(kind, exc, tb))))


def install() -> None:
    """Redact every log line of this process's root handlers, and an uncaught exception's traceback.

    Call it once logging is configured (the CLI, a snapshot worker process).
    """
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    sys.excepthook = _excepthook
