"""Typed settings from flags, the environment (``CDC_*``) and a TOML file.

Each setting is declared once, as a field of `Settings` made with `setting()`.
Everything users see derives from that declaration (`OPTIONS`): the flag
(``--topic-config``), its environment variable (the flag's name in upper case,
``CDC_TOPIC_CONFIG``), its TOML key (``topic_config`` or ``topic-config``), the
default, the help, the choices of an enumerated setting (its ``Literal`` type)
and whether the flag is given once per ``key=value``. The CLI builds its
options from `OPTIONS`, the README's table comes from `markdown_table`.

Precedence: flag > environment > file > default. Every value is checked here,
once, and a bad one raises `ConfigError` naming the setting, where it came
from, and what is expected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NewType, Protocol, get_args, get_origin, get_type_hints

from cdc import redact
from cdc.errors import ConfigError

log = logging.getLogger(__name__)

SnapshotMode = Literal["initial", "never", "initial-only"]
Format = Literal["avro", "json"]
ProducerKind = Literal["auto", "kafka-python", "confluent"]
Delivery = Literal["at-least-once", "exactly-once"]
SlotLostAction = Literal["fail", "recreate"]
OffsetMismatchAction = Literal["trust-slot", "fail"]
LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
TransformErrorAction = Literal["fail", "skip", "dead-letter"]
RecordErrorAction = Literal["fail", "dead-letter"]
#: ``schema.table`` (or a pattern) -> column names: ``--columns public.users:id,email``
TableColumns = NewType("TableColumns", dict[str, list[str]])
#: ``schema.table`` (or a pattern) -> a condition: ``--row-filter "public.orders:status <> 'test'"``
TableConditions = NewType("TableConditions", dict[str, str])

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")

#: libpq reads these when a connection string leaves them out, so any of them names a database.
LIBPQ_VARIABLES = (
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE",
    "PGSERVICE", "PGSERVICEFILE",
)  # fmt: skip


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cdc"


@dataclass(frozen=True, slots=True)
class _Declared:
    help: str
    flag: str
    shown: str
    repeatable: bool
    secret: bool
    old_names: tuple[str, ...]
    key: str
    metavar: str
    shared: bool = False  # a connector setting another command declares with `same_as`


_DECLARED = "cdc.setting"


def setting(
    default: object,
    help: str,
    *,
    flag: str = "",
    shown: str = "",
    repeatable: bool = False,
    secret: bool = False,
    old_names: tuple[str, ...] = (),
    key: str = "",
    metavar: str = "",
) -> Any:
    """Declare a `Settings` field together with the option that sets it.

    ``default`` is the value, or a function making it (for lists, dicts and
    computed defaults). ``flag`` is the flag's name without dashes when it is
    not the field's name with ``-`` for ``_``; ``shown`` is the default as
    ``--help`` shows it when the value itself does not say it; ``repeatable``
    marks a ``key=value`` option given once per pair; ``secret`` values
    print as ``***`` (of a ``key=value`` option: the values of its secret keys,
    `cdc.redact.is_secret_key`); ``old_names`` are former TOML keys / ``CDC_``
    names, still read with a warning; ``key`` is the TOML key when it is not
    the flag's name (which is read too); ``metavar`` names a repeatable option's
    value (``KEY=VALUE`` when not given).
    """
    declared = _Declared(help, flag, shown, repeatable, secret, old_names, key, metavar)
    metadata = {_DECLARED: declared}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def same_as(name: str) -> Any:
    """A field of another settings class (`cdc.sink.settings.SinkSettings`) that *is* the connector's
    setting ``name``: the same declaration (flag, ``CDC_`` variable, top-level TOML key, default, help),
    so the Kafka client settings are written once for every command that reads them."""
    spec = Settings.__dataclass_fields__[name]
    declared = dataclasses.replace(spec.metadata[_DECLARED], shared=True)
    metadata = {_DECLARED: declared}
    if spec.default_factory is not dataclasses.MISSING:
        return field(default_factory=spec.default_factory, metadata=metadata)
    return field(default=spec.default, metadata=metadata)


@dataclass(slots=True)
class Settings:
    """Everything `cdc start` needs; each field is one option (see `OPTIONS`)."""

    dsn: str = setting(
        "", "Postgres connection string (key=value or URI).", shown="libpq's PG* variables", secret=True
    )
    dsn_file: Path | None = setting(
        None, "File holding the connection string (a secret on disk); instead of --dsn.", shown="none"
    )
    bootstrap_servers: str = setting("localhost:9092", "Kafka brokers, host:port,...")
    kafka_config: dict[str, str] = setting(
        dict,
        "key=value Kafka client setting (security.protocol, sasl.*, ssl.*, ...) of every client: "
        "producer, admin, consumers.",
        repeatable=True,
        secret=True,
        key="kafka",
    )
    kafka_config_file: Path | None = setting(
        None,
        "Properties file (key=value lines, as for librdkafka or the Java client) of Kafka client "
        "settings; --kafka-config wins over it.",
        shown="none",
    )
    name: str = setting("cdc", "Connector name: its state, slot and publication default to it.")
    tables: list[str] = setting(
        list,
        "schema.table,... to capture; * and ? match any name (public.*, sales.order_*), tables created "
        "later included.",
        shown="every published table",
    )
    exclude_tables: list[str] = setting(list, "schema.table,... (or patterns) to leave out of --tables.")
    topic_prefix: str = setting("cdc", "Topics are PREFIX.schema.table, PREFIX.schemas, PREFIX.messages, ...")
    slot: str = setting("", "Replication slot.", shown="cdc_NAME")
    publication: str = setting("", "Publication.", shown="cdc_NAME")
    snapshot: SnapshotMode = setting(
        "initial",
        "initial: read the existing rows, then stream; never: only stream; initial-only: only read them.",
    )
    format: Format = setting("avro", "Encoding of keys and values.")
    state_dir: Path = setting(
        default_state_dir,
        "Where connectors keep offsets, status, pid and log (one directory per name).",
        shown="$XDG_STATE_HOME/cdc or ~/.local/state/cdc",
    )
    status_interval: float = setting(1.0, "Seconds between confirmations to Postgres and status updates.")
    tombstones: bool = setting(True, "A tombstone (same key, null value) after each delete.")
    messages: bool = setting(True, "Stream pg_logical_emit_message to PREFIX.messages.")
    transaction_metadata: bool = setting(
        False, "BEGIN/END records of every transaction on PREFIX.transaction."
    )
    heartbeat_interval: float = setting(0.0, "Seconds between PREFIX.heartbeat records (0: none).")
    unavailable_placeholder: str = setting(
        "__cdc_unavailable_value", "Stands for an unchanged TOAST value the server did not send."
    )
    topic_partitions: int = setting(1, "Partitions of new topics.")
    topic_replication_factor: int = setting(-1, "Replicas of new topics (-1: the broker's default).")
    topic_configs: dict[str, str] = setting(
        dict,
        "key=value config of new topics.",
        flag="topic-config",
        repeatable=True,
        old_names=("topic_configs",),
    )
    producer: ProducerKind = setting(
        "auto", "Kafka client (auto: confluent when installed, else kafka-python)."
    )
    producer_configs: dict[str, str] = setting(
        dict,
        "key=value setting of the producer only (its client's own names); --kafka-config for all clients.",
        flag="producer-config",
        repeatable=True,
        secret=True,
        old_names=("producer_configs",),
    )
    max_buffer_mb: int = setting(64, "Producer buffer in MB; reading pauses while it is full.")
    delivery: Delivery = setting(
        "at-least-once",
        "exactly-once: Kafka transactions write whole Postgres transactions with the position they "
        "reach, so read_committed consumers see every change once, even after a crash.",
    )
    transaction_max_records: int = setting(
        50_000, "exactly-once: records per Kafka transaction before it commits (whole Postgres transactions)."
    )
    transaction_linger_ms: int = setting(
        100,
        "exactly-once: longest a Kafka transaction waits for more Postgres transactions before it commits.",
    )
    snapshot_workers: int = setting(2, "Processes reading the initial snapshot (threads when it is small).")
    snapshot_chunk_rows: int = setting(50_000, "Rows per snapshot chunk (key order).")
    reconnect_max_seconds: float = setting(
        30.0, "Longest wait between reconnects (the wait doubles from 0.5 s)."
    )
    metrics_port: int = setting(
        0, "Serve Prometheus metrics (/metrics) and probes (/healthz, /readyz) on this port (0: off)."
    )
    metrics_host: str = setting(
        "127.0.0.1", "Address the metrics port listens on (0.0.0.0: every interface, for a container)."
    )
    ready_reconnect_seconds: float = setting(
        30.0, "/readyz fails once the connector has been reconnecting for longer than this."
    )
    on_slot_lost: SlotLostAction = setting(
        "fail",
        "When the server invalidated the slot (WAL removed): fail, or recreate it and read the tables "
        "again (incremental snapshot).",
    )
    failover_slot: bool = setting(
        False, "Create the slot with FAILOVER (PostgreSQL 17+): it survives a promotion of a synced standby."
    )
    on_offset_mismatch: OffsetMismatchAction = setting(
        "trust-slot",
        "When offsets.json is ahead of the slot on another timeline (a failover to a lagging standby): "
        "trust-slot resumes from the slot, fail stops.",
    )
    heartbeat_query: str = setting(
        "",
        "SQL run on the database every --heartbeat-interval (10 s without one), so that the slot advances "
        "on a quiet database.",
        shown="none",
    )
    log_format: LogFormat = setting("text", "text, or json: one object per line.")
    log_level: LogLevel = setting("info", "Least severe log level written (--debug: debug).")
    log_file: str = setting(
        "",
        "Write the log to this file, rotated by size.",
        shown="stderr; cdc.log in the state dir with --detach",
    )
    log_max_mb: float = setting(
        50.0, "Rotate the log file at this size (0: never; reopen when moved, for logrotate)."
    )
    log_backups: int = setting(5, "Rotated log files kept.")
    # -- shaping what is captured (cdc.shaping)
    columns: TableColumns = setting(
        dict,
        "Publish only these columns of the table (a PostgreSQL 15+ column list: the others never leave "
        "the server).",
        repeatable=True,
        metavar="TABLE:COLUMN,...",
    )
    exclude_columns: TableColumns = setting(
        dict,
        "Publish every column of the table but these (PostgreSQL 15+).",
        repeatable=True,
        metavar="TABLE:COLUMN,...",
    )
    mask_columns: TableColumns = setting(
        dict,
        "Columns whose values reach Kafka masked: hashed with --mask-salt-file, else --mask-text.",
        repeatable=True,
        metavar="TABLE:COLUMN,...",
    )
    mask_salt_file: str = setting(
        "", "File holding the secret salt of masked values' hashes (HMAC-SHA256).", shown="none: fixed mask"
    )
    mask_text: str = setting("****", "What a masked value becomes without --mask-salt-file.")
    row_filters: TableConditions = setting(
        dict,
        "Publish only the rows of the table meeting the condition (a PostgreSQL 15+ row filter), the "
        "snapshot too.",
        flag="row-filter",
        repeatable=True,
        metavar="TABLE:CONDITION",
    )
    transforms: list[str] = setting(
        list,
        "Python function applied to every event, in order (a package of yours: see Shaping).",
        flag="transform",
        repeatable=True,
        metavar="MODULE:FUNCTION",
    )
    on_transform_error: TransformErrorAction = setting(
        "fail", "When a transform raises: stop, skip the event, or write it to PREFIX.dead-letter."
    )
    on_record_error: RecordErrorAction = setting(
        "fail",
        "When Kafka refuses a record for good (too large) or it cannot be encoded: stop, or write it to "
        "PREFIX.dead-letter and go on.",
    )
    table_check_interval: float = setting(
        10.0, "Seconds between looks for new tables matching --tables patterns (0: at start only)."
    )
    # -- the outbox event router (cdc.shaping.outbox)
    outbox_table: str = setting(
        "",
        "Outbox table (schema.table): each row inserted becomes one record on --outbox-topic, keyed by "
        "aggregateid, the payload as value, id and type as headers; its updates and deletes are ignored.",
        shown="none",
    )
    outbox_messages: bool = setting(
        False,
        "Route pg_logical_emit_message(true, 'outbox', JSON) like outbox rows (an outbox without a "
        "table; always on with --outbox-table).",
    )
    outbox_topic: str = setting(
        "{prefix}.outbox.{aggregatetype}",
        "Where routed events go: {prefix}, {aggregatetype} and {type} are replaced.",
    )
    outbox_fields: dict[str, str] = setting(
        dict,
        "Another name for an outbox column (id, aggregatetype, aggregateid, type, payload, timestamp), "
        "or JSON field of a message.",
        flag="outbox-field",
        repeatable=True,
        metavar="FIELD=COLUMN",
    )
    outbox_headers: dict[str, str] = setting(
        dict,
        "Another outbox column (or message field) sent as a Kafka header of each routed event.",
        flag="outbox-header",
        repeatable=True,
        metavar="COLUMN=HEADER",
    )

    @property
    def instance_dir(self) -> Path:
        """Where this connector keeps its offsets, status, pid and log."""
        return self.state_dir / self.name

    def __post_init__(self) -> None:
        if not self.slot:
            self.slot = _identifier(f"cdc_{self.name}")
        if not self.publication:
            self.publication = _identifier(f"cdc_{self.name}")

    def __repr__(self) -> str:
        """Every field, secrets as ``***``: settings may end up in a log or a traceback."""
        shown = []
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.metadata[_DECLARED].secret:
                if isinstance(value, dict):
                    value = redact.redact_pairs(value)
                elif value:
                    value = redact.MASK
            shown.append(f"{spec.name}={value!r}")
        return f"Settings({', '.join(shown)})"


def _identifier(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower())[:63]


@dataclass(frozen=True, slots=True)
class Option:
    """A setting as users see it, derived from its `Settings` field."""

    name: str  # the Settings field
    flag: str  # --topic-config
    env: str  # CDC_TOPIC_CONFIG
    key: str  # topic_config in TOML (topic-config works too)
    type: Any  # the field's type
    help: str
    default: str  # as --help shows it
    value: object  # the default itself
    choices: tuple[str, ...]  # of a Literal type; empty otherwise
    repeatable: bool  # --topic-config a=1 --topic-config b=2
    secret: bool  # printed as ***
    old_names: tuple[str, ...]  # former TOML keys (and CDC_ names, upper case)
    shared: bool = False  # another command's copy of a connector setting (`same_as`)
    metavar: str = ""  # a repeatable option's value, as --help shows it

    @property
    def env_form(self) -> str:
        """How a repeatable option's values are written in one ``CDC_`` variable."""
        if self.type in (TableColumns, TableConditions):
            return f"{self.metavar};..."
        return f"{self.metavar},..."


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value in ({}, [], ""):
        return "none"
    return str(value)


def options_of(cls: type, env_prefix: str = "CDC_") -> dict[str, Option]:
    """The options of a settings dataclass whose fields are declared with `setting` (or `same_as`).

    A field's environment variable is ``env_prefix`` and its flag's name in upper case
    (``CDC_SINK_DSN`` for the sink's ``--dsn``); one copied with `same_as` keeps the connector's.
    """
    hints = get_type_hints(cls)
    options: dict[str, Option] = {}
    for spec in dataclasses.fields(cls):
        declared = spec.metadata.get(_DECLARED)
        if not isinstance(declared, _Declared):
            raise TypeError(f"{cls.__name__}.{spec.name} is not declared with setting()")
        flag = declared.flag or spec.name.replace("_", "-")
        if spec.default_factory is not dataclasses.MISSING:
            default: object = spec.default_factory()
        else:
            default = spec.default
        options[spec.name] = Option(
            name=spec.name,
            flag=f"--{flag}",
            env=("CDC_" if declared.shared else env_prefix) + flag.upper().replace("-", "_"),
            key=declared.key or flag.replace("-", "_"),
            type=hints[spec.name],
            help=declared.help,
            default=declared.shown or _shown(default),
            value=default,
            choices=get_args(hints[spec.name]) if get_origin(hints[spec.name]) is Literal else (),
            repeatable=declared.repeatable,
            secret=declared.secret,
            old_names=declared.old_names,
            shared=declared.shared,
            metavar=declared.metavar or ("KEY=VALUE" if declared.repeatable else ""),
        )
    return options


#: Every setting, in declaration order, by `Settings` field name.
OPTIONS: dict[str, Option] = options_of(Settings)

#: Tables of the config file that belong to other commands (``[sink]``: `cdc sink postgres`).
SECTIONS: tuple[str, ...] = ("sink",)


def _keys(options: Mapping[str, Option]) -> dict[str, str]:
    """TOML key (dashes read as underscores) -> field name: the key, the flag's name, the former keys."""
    return {
        key: o.name
        for o in options.values()
        for key in (o.key, o.flag.removeprefix("--").replace("-", "_"), *o.old_names)
    }


_KEYS = _keys(OPTIONS)


def _coerce(option: Option, raw: Any, label: str, origin: str) -> Any:
    """Convert ``raw`` (text from the environment, a TOML value, or a parsed flag) to the field's type."""
    try:
        return _CONVERTERS.get(option.type, _convert_text)(option, raw)
    except (TypeError, ValueError) as exc:
        shown = "***" if option.secret else repr(raw)
        raise ConfigError(f"{label} = {shown} from {origin}: {exc}") from None


def _convert_bool(option: Option, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _convert_int(option: Option, raw: Any) -> int:
    if isinstance(raw, int | str) and not isinstance(raw, bool):
        with contextlib.suppress(ValueError):
            return int(raw)
    raise ValueError("expected an integer")


def _convert_float(option: Option, raw: Any) -> float:
    if isinstance(raw, int | float | str) and not isinstance(raw, bool):
        with contextlib.suppress(ValueError):
            return float(raw)
    raise ValueError("expected a number")


def _convert_path(option: Option, raw: Any) -> Path:
    if not isinstance(raw, str | Path):
        raise ValueError("expected a path (a string)")
    return Path(str(raw)).expanduser()


def _convert_optional_path(option: Option, raw: Any) -> Path | None:
    if raw in ("", None):
        return None
    return _convert_path(option, raw)


def _convert_list(option: Option, raw: Any) -> list[str]:
    if isinstance(raw, list | tuple) and all(isinstance(x, str) for x in raw):
        items = [x.strip() for x in raw]
    elif isinstance(raw, str):
        items = [x.strip() for x in raw.split(",")]
    else:
        raise ValueError('expected a list of strings or "a,b" text')
    return [x for x in items if x]


#: In "key=value,key=value" text a comma starts the next pair only before "key=": a value may hold
#: commas and "=" (``sasl.password=a,b``); ``\\,`` is a comma that never splits.
_NEXT_PAIR = re.compile(r"(?<!\\),(?=\s*[^\s=,]+\s*=)")


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """TOML's dotted keys make nested tables (``sasl.mechanism = ...``): back to dotted names."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _pair_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as Kafka clients spell it
    return str(value)


def _convert_pairs(option: Option, raw: Any) -> dict[str, str]:
    """A table, one ``key=value`` per flag (a value keeps its commas), or ``key=value,...`` text.

    Never quotes a value of a secret option in its errors: a malformed pair may be half a password.
    """
    if isinstance(raw, dict):
        flat = _flatten(raw)
        if not all(isinstance(v, str | int | float | bool) for v in flat.values()):
            raise ValueError("expected a table of key = value (text, number or boolean)")
        return {k: _pair_text(v) for k, v in flat.items()}
    if isinstance(raw, list | tuple) and all(isinstance(x, str) for x in raw):
        pairs = [p.strip() for p in raw]  # one flag per pair: a value may hold commas
    elif isinstance(raw, str):
        pairs = [p.strip().replace("\\,", ",") for p in _NEXT_PAIR.split(raw)]
    else:
        raise ValueError('expected a table of key = value or "key=value,..." text')
    result = {}
    for number, pair in enumerate(filter(None, pairs), 1):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            if option.secret:
                raise ValueError(f"item {number} is not key=value (its text is not shown: it may be secret)")
            raise ValueError(f"expected key=value pairs, got {pair!r}")
        result[key.strip()] = value.strip()
    return result


def _table_entries(raw: Any, what: str) -> list[tuple[str, Any]]:
    """``(table, value)`` pairs of a table-keyed setting: a TOML table, ``TABLE:VALUE`` flags (one per
    table) or ``TABLE:VALUE;TABLE:VALUE`` text."""
    if isinstance(raw, dict):
        return [(str(k), v) for k, v in raw.items()]
    if isinstance(raw, list | tuple) and all(isinstance(x, str) for x in raw):
        entries = list(raw)
    elif isinstance(raw, str):
        entries = raw.split(";")
    else:
        raise ValueError(f'expected a table of schema.table = {what}, or "schema.table:{what}" text')
    pairs = []
    for entry in filter(None, (e.strip() for e in entries)):
        table, sep, value = entry.partition(":")
        if not sep or not table.strip():
            raise ValueError(f"expected schema.table:{what}, got {entry!r}")
        pairs.append((table.strip(), value.strip()))
    return pairs


def _convert_table_columns(option: Option, raw: Any) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for table, value in _table_entries(raw, "column,..."):
        if isinstance(value, str):
            columns = [c.strip() for c in value.split(",")]
        elif isinstance(value, list) and all(isinstance(c, str) for c in value):
            columns = [c.strip() for c in value]
        else:
            raise ValueError(f"expected column names for {table}")
        columns = [c for c in columns if c]
        if not columns:
            raise ValueError(f"no column named for {table}")
        result.setdefault(table, [])
        result[table] += [c for c in columns if c not in result[table]]
    return result


def _convert_table_conditions(option: Option, raw: Any) -> dict[str, str]:
    result: dict[str, str] = {}
    for table, value in _table_entries(raw, "condition"):
        if not isinstance(value, str):
            raise ValueError(f"expected a condition (text) for {table}")
        condition = re.sub(r"(?is)^\s*where\s+", "", value).strip()
        if not condition:
            raise ValueError(f"no condition given for {table}")
        if table in result:
            raise ValueError(f"two conditions for {table}: combine them with AND")
        result[table] = condition
    return result


def _convert_text(option: Option, raw: Any) -> Any:
    if option.choices:
        if raw not in option.choices:
            raise ValueError(f"expected one of {', '.join(option.choices)}")
        return raw
    if not isinstance(raw, str):
        raise ValueError("expected a string")
    return raw


_CONVERTERS: dict[object, Callable[[Option, Any], Any]] = {
    bool: _convert_bool,
    int: _convert_int,
    float: _convert_float,
    Path: _convert_path,
    Path | None: _convert_optional_path,
    list[str]: _convert_list,
    dict[str, str]: _convert_pairs,
    TableColumns: _convert_table_columns,
    TableConditions: _convert_table_conditions,
}


def load_file(
    path: Path, options: Mapping[str, Option] | None = None, section: str | None = None
) -> dict[str, tuple[str, Any]]:
    """Read a TOML config: field name -> (the key as written, its value). Keys may use - or _.

    The connector's settings are the top-level keys (the tables of `SECTIONS` are other
    commands'). With ``section`` (``"sink"``), the settings ``options`` are read from that table,
    and from the top level only those it shares with the connector (`same_as`): one file
    serves the connector and the sink.
    """
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: fix --config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    options = OPTIONS if options is None else options
    keys = _KEYS if options is OPTIONS else _keys(options)
    values: dict[str, tuple[str, Any]] = {}
    if section is None:
        items = [(k, v, k) for k, v in data.items() if not (k in SECTIONS and isinstance(v, dict))]
    else:
        own = data.get(section, {})
        if not isinstance(own, dict):
            raise ConfigError(f"{section!r} in config file {path} must be a table ([{section}])")
        shared = {key for key, name in keys.items() if options[name].shared}
        items = [(k, v, k) for k, v in data.items() if k.replace("-", "_") in shared]
        items += [(k, v, f"{section}.{k}") for k, v in own.items()]
    for key, value, label in items:
        name = keys.get(key.replace("-", "_"))
        if name is None:
            where = f"[{section}] of " if section else ""
            raise ConfigError(f"unknown key {key!r} in {where}config file {path}: see the command's --help")
        if name in values:
            raise ConfigError(
                f"{values[name][0]!r} and {label!r} in config file {path} are one setting: keep one"
            )
        if key.replace("-", "_") in options[name].old_names:
            log.warning("config file %s: %r is now %r; rename it", path, key, options[name].key)
        values[name] = (label, value)
    return values


def _from_environment(option: Option, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """``(variable, text)`` of the option's ``CDC_`` variable, or of a former name (with a warning)."""
    for variable in (option.env, *(f"CDC_{old.upper()}" for old in option.old_names)):
        text = environ.get(variable)
        if text not in (None, ""):
            if variable != option.env:
                log.warning("%s is now %s; rename it", variable, option.env)
            return variable, str(text)
    return None


def resolve(
    flags: Mapping[str, object],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    options: Mapping[str, Option] | None = None,
    section: str | None = None,
) -> dict[str, Any]:
    """The settings given by flag, ``CDC_<FLAG>`` variable or file, converted; defaults left out.

    ``flags`` maps field names to parsed flag values, None (or an empty list)
    meaning not given. ``options`` and ``section`` are another command's settings and its
    table in the file (see `load_file`); the connector's by default. Raises `ConfigError`
    for a bad value or file.
    """
    environ = os.environ if environ is None else environ
    options = OPTIONS if options is None else options
    in_file = load_file(config_file, options, section) if config_file else {}
    chosen: dict[str, Any] = {}
    for option in options.values():
        flag = flags.get(option.name)
        if flag is not None and flag not in ([], ()):
            chosen[option.name] = _coerce(option, flag, option.flag, "the command line")
        elif variable := _from_environment(option, environ):
            chosen[option.name] = _coerce(option, variable[1], variable[0], "the environment")
        elif option.name in in_file:
            key, value = in_file[option.name]
            chosen[option.name] = _coerce(option, value, key, str(config_file))
    return chosen


def from_values(values: Mapping[str, Any]) -> Settings:
    """`Settings` from what `resolve` found, the rest defaulted; checked as a whole.

    The secrets among them are remembered (`cdc.redact`) from here on. Files named by
    ``dsn_file`` and ``kafka_config_file`` are not read here but where they are used
    (`require_dsn`, `kafka_pairs`): a command that needs neither never opens them.
    """
    settings = Settings(**values)
    validate(settings)
    redact.remember_dsn(settings.dsn)
    redact.remember_pairs(settings.kafka_config)
    redact.remember_pairs(settings.producer_configs)
    return settings


def build(
    flags: Mapping[str, object],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from flags, ``CDC_<FLAG>`` variables, the file and the defaults, in that precedence."""
    return from_values(resolve(flags, config_file, environ))


def validate(settings: Settings) -> None:
    if settings.transaction_max_records < 1 or settings.transaction_linger_ms < 0:
        raise ConfigError("transaction_max_records must be at least 1 and transaction_linger_ms at least 0")
    if not _NAME.fullmatch(settings.name):
        raise ConfigError(
            f"name {settings.name!r} is not usable: up to 63 letters, digits, _ . -, not starting with . or -"
        )
    for label, value in (("slot", settings.slot), ("publication", settings.publication)):
        if not _IDENT.fullmatch(value):
            raise ConfigError(f"{label} {value!r} is not a valid name: lowercase letters, digits and _")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", settings.topic_prefix):
        raise ConfigError(f"topic_prefix {settings.topic_prefix!r}: use letters, digits, '.', '_', '-'")
    if settings.status_interval <= 0 or settings.status_interval > 60:
        raise ConfigError("status_interval must be between 0 and 60 seconds")
    if settings.heartbeat_interval < 0:
        raise ConfigError("heartbeat_interval must be 0 (off) or a number of seconds")
    if settings.topic_partitions < 1:
        raise ConfigError("topic_partitions must be at least 1")
    if settings.max_buffer_mb < 1:
        raise ConfigError("max_buffer_mb must be at least 1")
    if settings.snapshot_workers < 1:
        raise ConfigError("snapshot_workers must be at least 1")
    if settings.snapshot_chunk_rows < 1:
        raise ConfigError("snapshot_chunk_rows must be at least 1")
    if settings.reconnect_max_seconds <= 0:
        raise ConfigError("reconnect_max_seconds must be a positive number of seconds")
    if not 0 <= settings.metrics_port <= 65535:
        raise ConfigError("metrics_port must be a TCP port (1-65535), or 0 for none")
    if settings.ready_reconnect_seconds <= 0:
        raise ConfigError("ready_reconnect_seconds must be a positive number of seconds")
    if settings.log_max_mb < 0 or settings.log_backups < 0:
        raise ConfigError("log_max_mb and log_backups must be 0 or more")
    for table in [*settings.tables, *settings.exclude_tables]:
        if not re.fullmatch(r"[^.\s]+(\.[^.\s]+)?", table):
            raise ConfigError(f"table {table!r}: expected schema.table or table")
    if settings.table_check_interval < 0:
        raise ConfigError("table_check_interval must be 0 (at start only) or a number of seconds")
    for label, tables in (
        ("columns", settings.columns),
        ("exclude_columns", settings.exclude_columns),
        ("mask_columns", settings.mask_columns),
        ("row_filter", settings.row_filters),
    ):
        for table in tables:
            if not re.fullmatch(r"[^.\s]+(\.[^.\s]+)?", table):
                raise ConfigError(f"{label} {table!r}: expected schema.table:... (or a pattern)")
    both = set(settings.columns) & set(settings.exclude_columns)
    if both:
        raise ConfigError(f"--columns and --exclude-columns both name {sorted(both)[0]}: keep one")
    for spec in settings.transforms:
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", spec):
            raise ConfigError(f"transform {spec!r}: expected package.module:function")
    if settings.outbox_table and not re.fullmatch(r"[^.\s]+(\.[^.\s]+)?", settings.outbox_table):
        raise ConfigError(f"outbox_table {settings.outbox_table!r}: expected schema.table or table")
    outbox_fields = ("id", "aggregatetype", "aggregateid", "type", "payload", "timestamp")
    for name in settings.outbox_fields:
        if name not in outbox_fields:
            raise ConfigError(f"outbox_field {name!r}: expected one of {', '.join(outbox_fields)}")
    try:
        settings.outbox_topic.format(prefix="p", aggregatetype="a", type="t")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"outbox_topic {settings.outbox_topic!r}: use {{prefix}}, {{aggregatetype}} and {{type}} "
            f"only ({type(exc).__name__}: {exc})"
        ) from None
    if settings.dsn and settings.dsn_file is not None:
        raise ConfigError(
            "both dsn and dsn_file are given (as flags, CDC_ variables or config keys): keep one"
        )


def require_dsn(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """A database must be named: by the dsn, the dsn file, or libpq's ``PG*`` variables, which fill
    an empty one. The dsn file is read here, into ``settings.dsn``; `ConfigError` when it cannot be."""
    environ = os.environ if environ is None else environ
    if settings.dsn_file is not None:
        settings.dsn = read_secret_file(settings.dsn_file, "dsn_file")
        redact.remember_dsn(settings.dsn)
    if settings.dsn or any(environ.get(variable) for variable in LIBPQ_VARIABLES):
        return
    raise ConfigError(
        "no database given: pass --dsn or --dsn-file, set CDC_DSN, CDC_DSN_FILE or libpq's "
        "PGHOST/PGDATABASE/PGUSER/PGSERVICE, or put dsn in the config file"
    )


# -- secrets on disk ------------------------------------------------------------------------------


def _read_text(path: Path, setting: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{setting} {path} does not exist: fix --{setting.replace('_', '-')}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read {setting} {path}: {reason}") from None


def read_secret_file(path: Path, setting: str) -> str:
    """The one value a secret file holds (a Docker or Kubernetes secret, a 0600 file): its text
    without the line break at the end. `ConfigError` (naming the file, never its text) otherwise."""
    text = _read_text(path, setting).strip()
    if not text:
        raise ConfigError(f"{setting} {path} is empty")
    return text


_PROPERTY_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape_property(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(2):
            return chr(int(match.group(2), 16))
        return _PROPERTY_ESCAPES.get(match.group(1), match.group(1))

    return re.sub(r"\\(u([0-9A-Fa-f]{4})|.)", one, text, flags=re.S)


#: key (up to an unescaped blank, = or :), the separator, the value
_PROPERTY = re.compile(r"((?:[^\s=:\\]|\\.)*)\s*[=:]?\s*(.*)", re.S)


def parse_properties(text: str) -> dict[str, str]:
    """``key=value`` lines as Java's ``.properties`` (and librdkafka's config files) write them.

    ``#`` and ``!`` start comments; the key ends at the first unescaped ``=``, ``:`` or
    blank; a line ending in an odd number of backslashes goes on on the next one; ``\\\\``,
    ``\\t``, ``\\uXXXX`` ... are escapes. Values keep everything after the separator
    (``=`` and spaces included), so a JAAS line or a password with ``,`` and ``=`` reads as written.
    """
    result: dict[str, str] = {}
    logical = ""
    lines = text.splitlines()
    for number, raw_line in enumerate(lines):
        line = raw_line.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        backslashes = len(line) - len(line.rstrip("\\"))
        if backslashes % 2 and number < len(lines) - 1:
            logical += line[:-1]  # continued on the next line, whose leading blanks are dropped
            continue
        match = _PROPERTY.fullmatch(logical + line)
        assert match is not None  # the pattern matches any text
        logical = ""
        key = _unescape_property(match.group(1))
        if key:
            result[key] = _unescape_property(match.group(2))
    return result


class KafkaSettings(Protocol):
    """What a Kafka client is made from: the connector's `Settings`, or the sink's."""

    bootstrap_servers: str
    kafka_config: dict[str, str]
    kafka_config_file: Path | None


def kafka_pairs(settings: KafkaSettings) -> dict[str, str]:
    """The Kafka client settings as given: the properties file's, then ``--kafka-config``'s over them.

    Reads ``kafka_config_file`` (at each call: a rotated secret is picked up by the next client).
    Raises `ConfigError` when it cannot be read; never quotes its content.
    """
    pairs: dict[str, str] = {}
    if settings.kafka_config_file is not None:
        path = settings.kafka_config_file
        pairs = parse_properties(_read_text(path, "kafka_config_file"))
        redact.remember_pairs(pairs)
    pairs.update(settings.kafka_config)
    redact.remember_pairs(settings.kafka_config)
    return pairs


def markdown_table(options: Mapping[str, Option] | None = None, section: str | None = None) -> str:
    """The README's table of settings, made from the declarations (a test keeps the README current).

    ``options`` and ``section``: another command's settings, whose own TOML keys are in ``[section]``.
    """
    rows = [
        "| flag | environment | TOML key | default | |",
        "| --- | --- | --- | --- | --- |",
    ]
    for option in (OPTIONS if options is None else options).values():
        flag = f"`{option.flag}`"
        if option.type is bool:
            flag = f"`{option.flag}` / `--no-{option.flag[2:]}`"
        elif option.repeatable:
            flag = f"`{option.flag} {option.metavar}` (repeatable)"
        elif option.choices:
            flag = f"`{option.flag} " + "\\|".join(option.choices) + "`"  # a | would split the cell
        described = option.default != _shown(option.value) or option.value in ({}, [], "")
        default = option.default if described else f"`{option.default}`"
        key = option.key if section is None or option.shared else f"{section}.{option.key}"
        rows.append(f"| {flag} | `{option.env}` | `{key}` | {default} | {option.help} |")
    return "\n".join(rows) + "\n"
