"""Where the log goes and how it looks: ``--log-format``, ``--log-level``, ``--log-file``.

Text (the default) is one human line per record. JSON is one object per line
with ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and the
record's structured fields: whatever a call passes as ``extra`` (``table``,
``lsn``, ``topic``, ``slot``, ...), and ``exc`` with a traceback.

A log file (``--log-file``; ``cdc start --detach`` uses ``cdc.log`` in the
state directory) is rotated by size (``--log-max-mb``, ``--log-backups``), or
with ``--log-max-mb 0`` reopened whenever it is moved, for logrotate. Snapshot
worker processes append to the same file and reopen it after a rotation.
"""

from __future__ import annotations

import datetime as dt
import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Any, Final

import orjson

from cdc import redact
from cdc.errors import ConfigError

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, then the structured fields."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix  # who wrote it, for the snapshot workers: "worker-1"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.prefix:
            entry["process"] = self.prefix
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            # cdc.redact's filter leaves the traceback, secrets removed, in exc_text
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def _level(name: str, debug: bool) -> int:
    return logging.DEBUG if debug else getattr(logging, name.upper(), logging.INFO)


def _file_handler(path: Path, max_mb: float, backups: int, follow: bool) -> logging.Handler:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if follow or not max_mb:
            return logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        return logging.handlers.RotatingFileHandler(
            path, maxBytes=int(max_mb * 1024 * 1024), backupCount=backups, encoding="utf-8"
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot write the log file {path}: {exc.strerror or exc}; fix --log-file"
        ) from None


def configure(
    log_format: str,
    log_level: str,
    log_file: str = "",
    max_mb: float = 0.0,
    backups: int = 0,
    *,
    debug: bool = False,
    prefix: str = "",
) -> None:
    """Replace the root logger's handlers with one as the settings say.

    ``prefix`` marks a helper process (a snapshot worker): its lines name it,
    and it never rotates a shared file, only follows it.
    """
    if log_file:
        handler = _file_handler(Path(log_file).expanduser(), max_mb, backups, follow=bool(prefix))
    else:
        handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(prefix))
    else:
        name = f"{prefix} %(name)s" if prefix else "%(name)s"
        handler.setFormatter(logging.Formatter(TEXT_FORMAT.replace("%(name)s", name)))
    handler.addFilter(redact.RedactingFilter())  # no secret in any log line
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, logging.FileHandler):
            old.close()
    root.addHandler(handler)
    root.setLevel(_level(log_level, debug))


def to_file() -> bool:
    """Does the log go to a file (so a fatal error must be written there too)?"""
    return any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers)
