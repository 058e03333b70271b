"""The settings of `cdc sink postgres` (and of `cdc.sink.Sink` in a service's own code).

Declared once, as `cdc.config` declares the connector's: each field is one
option (`SINK_OPTIONS`) with its flag, its environment variable and its TOML
key. The sink's own settings read ``CDC_SINK_<FLAG>`` and the ``[sink]`` table
of the config file, so that one environment and one file serve a connector
and a sink (``CDC_DSN`` stays the connector's source, ``CDC_SINK_DSN`` is the
sink's target); the Kafka client settings are the connector's own declarations
(`cdc.config.same_as`): the same ``--bootstrap-servers``, ``CDC_KAFKA_CONFIG``,
top-level ``bootstrap_servers`` and ``[kafka]``; so are the TOAST placeholder
(which must be the connector's) and the log format and level.

Light on purpose: the CLI imports it to build its options.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cdc import config, redact
from cdc.config import Option, same_as, setting
from cdc.errors import ConfigError
from cdc.lsn import format_lsn, parse_lsn

Isolation = Literal["read_committed", "read_uncommitted"]

#: Where the sink's settings are in the config file, and the prefix of their variables.
SECTION = "sink"
ENV_PREFIX = "CDC_SINK_"
DEFAULT_GROUP = "cdc-sink"

_TABLE = re.compile(r"[^.\s]+\.[^.\s]+|[^.\s]+")


@dataclass(slots=True)
class SinkSettings:
    """Everything a sink needs; each field is one option (see `SINK_OPTIONS`)."""

    dsn: str = setting(
        "",
        "Target Postgres connection string (key=value or URI): where the changes are applied.",
        shown="libpq's PG* variables",
        secret=True,
    )
    dsn_file: Path | None = setting(
        None,
        "File holding the target's connection string (a secret on disk); instead of --dsn.",
        shown="none",
    )
    bootstrap_servers: str = same_as("bootstrap_servers")
    kafka_config: dict[str, str] = same_as("kafka_config")
    kafka_config_file: Path | None = same_as("kafka_config_file")
    topics: list[str] = setting(list, "Change topics to apply (PREFIX.schema.table,...).", shown="none")
    group: str = setting(
        "",
        "Kafka consumer group: sink processes with the same group share the topics' partitions. The "
        "positions are stored in the target under this name (cdc-sink without one).",
        shown="none: every partition, in this process",
    )
    table_map: dict[str, str] = setting(
        dict,
        "Source table -> target table (schema.table=schema.table); others keep their name.",
        repeatable=True,
    )
    topic_prefix: str = setting(
        "",
        "The connector's topic prefix: its PREFIX.schemas and PREFIX.transaction topics.",
        shown="guessed from the topics",
    )
    transaction_metadata: bool = setting(
        False,
        "Apply each source transaction atomically, in commit order, as PREFIX.transaction (the "
        "connector's --transaction-metadata) counts its events.",
    )
    until: str = setting(
        "",
        "Stop once every change before this point is applied: an LSN (X/X, exclusive) or an ISO 8601 "
        "time (commit time, inclusive): the target holds the tables as of then.",
        shown="never: run until stopped",
    )
    create_tables: bool = setting(
        True, "Create missing target tables (and columns) from the change schema, keyed by the record key."
    )
    positions_table: str = setting(
        "cdc_sink_positions",
        "Target table holding the last applied position per (group, topic, partition).",
    )
    batch_rows: int = setting(
        5_000, "Changes per target transaction at most (a larger source transaction stays whole)."
    )
    batch_mb: float = setting(16.0, "MB of changes per target transaction at most (likewise).")
    batch_linger_ms: int = setting(
        200, "Longest a change waits for more before its target transaction commits."
    )
    isolation: Isolation = setting(
        "read_committed",
        "read_committed: only what committed Kafka transactions wrote (an exactly-once connector's); "
        "read_uncommitted: aborted records too.",
    )
    consumer_config: dict[str, str] = setting(
        dict,
        "key=value setting of the consumer only (kafka-python's names, or the dotted ones).",
        repeatable=True,
    )
    unavailable_placeholder: str = same_as("unavailable_placeholder")
    log_format: config.LogFormat = same_as("log_format")
    log_level: config.LogLevel = same_as("log_level")

    @property
    def positions_key(self) -> str:
        """The name the positions are stored under: the group, or cdc-sink."""
        return self.group or DEFAULT_GROUP

    def __repr__(self) -> str:
        shown = []
        for name, option in SINK_OPTIONS.items():
            value = getattr(self, name)
            if option.secret:
                value = redact.redact_pairs(value) if isinstance(value, dict) else (value and redact.MASK)
            shown.append(f"{name}={value!r}")
        return f"SinkSettings({', '.join(shown)})"


#: Every sink setting, in declaration order, by field name.
SINK_OPTIONS: dict[str, Option] = config.options_of(SinkSettings, ENV_PREFIX)


@dataclass(frozen=True, slots=True)
class Until:
    """Where ``--until`` stops: before an LSN, or after a commit time (Unix ms)."""

    lsn: int | None = None
    time_ms: int | None = None

    def passed(self, commit_lsn: int, commit_ts_ms: int) -> bool:
        """Is a change at this position beyond the point (not to be applied)?"""
        if self.lsn is not None:
            return commit_lsn >= self.lsn
        assert self.time_ms is not None
        return commit_ts_ms > self.time_ms

    def __str__(self) -> str:
        if self.lsn is not None:
            return format_lsn(self.lsn)
        assert self.time_ms is not None
        return dt.datetime.fromtimestamp(self.time_ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def parse_until(text: str) -> Until | None:
    """``--until``: an LSN ``X/X`` or an ISO 8601 time (without a zone: UTC); None when empty."""
    text = text.strip()
    if not text:
        return None
    if re.fullmatch(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}", text):
        return Until(lsn=parse_lsn(text))
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ConfigError(
            f"until = {text!r}: expected an LSN (0/16B3748) or an ISO 8601 time (2026-11-25T10:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return Until(time_ms=int(moment.timestamp() * 1000))


def validate(settings: SinkSettings) -> None:
    """The sink's settings as a whole; `ConfigError` naming what to fix."""
    if not settings.topics:
        raise ConfigError("no topics given: pass --topics PREFIX.schema.table,... (CDC_SINK_TOPICS)")
    for source, target in settings.table_map.items():
        for table in (source, target):
            if not _TABLE.fullmatch(table):
                raise ConfigError(f"table_map {source}={target}: expected schema.table=schema.table")
    if settings.batch_rows < 1 or settings.batch_mb <= 0 or settings.batch_linger_ms < 0:
        raise ConfigError("batch_rows must be at least 1, batch_mb above 0, batch_linger_ms 0 or more")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", settings.positions_table):
        raise ConfigError(f"positions_table {settings.positions_table!r}: expected table or schema.table")
    parse_until(settings.until)
    if settings.dsn and settings.dsn_file is not None:
        raise ConfigError(
            "both dsn and dsn_file are given for the sink (flags, CDC_SINK_ variables, [sink]): keep one"
        )


def resolve(
    flags: Mapping[str, object], config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The sink settings given by flag, ``CDC_SINK_*`` (or shared ``CDC_*``) variable or file."""
    return config.resolve(flags, config_file, environ, SINK_OPTIONS, SECTION)


def from_values(values: Mapping[str, Any]) -> SinkSettings:
    """`SinkSettings` from what `resolve` found, the rest defaulted; checked, secrets remembered."""
    settings = SinkSettings(**values)
    validate(settings)
    redact.remember_dsn(settings.dsn)
    redact.remember_pairs(settings.kafka_config)
    redact.remember_pairs(settings.consumer_config)
    return settings


def build(
    flags: Mapping[str, object], config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> SinkSettings:
    return from_values(resolve(flags, config_file, environ))


def require_dsn(settings: SinkSettings, environ: Mapping[str, str] | None = None) -> None:
    """The target must be named (``--dsn``, ``--dsn-file`` or libpq's variables); reads the dsn file."""
    import os  # noqa: PLC0415

    environ = os.environ if environ is None else environ
    if settings.dsn_file is not None:
        settings.dsn = config.read_secret_file(settings.dsn_file, "dsn_file")
        redact.remember_dsn(settings.dsn)
    if settings.dsn or any(environ.get(variable) for variable in config.LIBPQ_VARIABLES):
        return
    raise ConfigError(
        "no target database given: pass --dsn or --dsn-file to cdc sink postgres, set CDC_SINK_DSN, "
        "CDC_SINK_DSN_FILE or libpq's PG* variables, or put dsn in the [sink] table of the config file"
    )
