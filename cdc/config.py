"""Typed settings from flags, the environment (``CDC_*``) and a TOML file.

Precedence: flag > environment > file > default. Every value is checked
here, once, and a bad one raises `ConfigError` naming the setting, where it
came from, and what is expected.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from cdc.errors import ConfigError

SnapshotMode = Literal["initial", "never", "initial-only"]
Format = Literal["avro", "json"]
ProducerKind = Literal["auto", "kafka-python", "confluent"]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cdc"


@dataclass(slots=True)
class Settings:
    """Everything `cdc start` needs. Field names are the flag names with underscores."""

    dsn: str = ""
    bootstrap_servers: str = "localhost:9092"
    name: str = "cdc"
    tables: list[str] = field(default_factory=list)
    topic_prefix: str = "cdc"
    slot: str = ""  # default: cdc_<name>
    publication: str = ""  # default: cdc_<name>
    snapshot: SnapshotMode = "initial"
    format: Format = "avro"
    state_dir: Path = field(default_factory=default_state_dir)
    status_interval: float = 1.0
    tombstones: bool = True
    messages: bool = True
    transaction_metadata: bool = False  # BEGIN/END records on <prefix>.transaction
    heartbeat_interval: float = 0.0  # seconds between <prefix>.heartbeat records; 0: none
    unavailable_placeholder: str = "__cdc_unavailable_value"
    topic_partitions: int = 1
    topic_replication_factor: int = -1  # -1: the broker's default
    topic_configs: dict[str, str] = field(default_factory=dict)
    producer: ProducerKind = "auto"  # confluent-kafka when installed, else kafka-python
    producer_configs: dict[str, str] = field(default_factory=dict)
    max_buffer_mb: int = 64
    snapshot_workers: int = 2
    snapshot_chunk_rows: int = 50_000
    reconnect_max_seconds: float = 30.0

    @property
    def instance_dir(self) -> Path:
        """Where this connector keeps its offsets, status, pid and log."""
        return self.state_dir / self.name

    def __post_init__(self) -> None:
        if not self.slot:
            self.slot = _identifier(f"cdc_{self.name}")
        if not self.publication:
            self.publication = _identifier(f"cdc_{self.name}")


def _identifier(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower())[:63]


FIELDS = {f.name for f in dataclasses.fields(Settings)}


def _coerce(name: str, raw: Any, origin: str) -> Any:
    """Convert ``raw`` (a string from a flag/env, or a TOML value) to the field's type."""
    hint = get_type_hints(Settings)[name]
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if hint is int:
            if isinstance(raw, bool | float):
                raise ValueError("expected an integer")
            return int(raw)
        if hint is float:
            if isinstance(raw, bool):
                raise ValueError("expected a number")
            return float(raw)
        if hint is Path:
            if not isinstance(raw, str | Path):
                raise ValueError("expected a path (a string)")
            return Path(str(raw)).expanduser()
        if hint == list[str]:
            if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
                items = [x.strip() for x in raw]
            elif isinstance(raw, str):
                items = [x.strip() for x in raw.split(",")]
            else:
                raise ValueError('expected a list of strings or "a,b" text')
            return [x for x in items if x]
        if hint == dict[str, str]:
            if isinstance(raw, dict):
                if not all(isinstance(v, str | int | float | bool) for v in raw.values()):
                    raise ValueError("expected a table of key = value (text, number or boolean)")
                return {str(k): str(v) for k, v in raw.items()}
            if not isinstance(raw, str):
                raise ValueError('expected a table of key = value or "key=value,..." text')
            pairs = [p.strip() for p in raw.split(",") if p.strip()]
            result = {}
            for pair in pairs:
                key, sep, value = pair.partition("=")
                if not sep:
                    raise ValueError(f"expected key=value pairs, got {pair!r}")
                result[key.strip()] = value.strip()
            return result
        choices = get_args(hint)
        if choices:
            if raw not in choices:
                raise ValueError(f"expected one of {', '.join(choices)}")
            return raw
        if not isinstance(raw, str):
            raise ValueError("expected a string")
        return raw
    except (TypeError, ValueError) as exc:
        shown = "***" if name == "dsn" else repr(raw)
        raise ConfigError(f"{name} = {shown} from {origin}: {exc}") from None


def load_file(path: Path) -> dict[str, Any]:
    """Read a TOML config; keys may use dashes or underscores."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: fix --config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"unknown key {key!r} in config file {path}: see `cdc start --help`")
        values[name] = value
    return values


def build(
    flags: Mapping[str, Any],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from flags (None = not given), ``CDC_<FLAG>`` variables, then the file."""
    environ = os.environ if environ is None else environ
    chosen: dict[str, Any] = {}
    file_values = load_file(config_file) if config_file else {}
    for name in FIELDS:
        flag = flags.get(name)
        env_key = f"CDC_{name.upper()}"
        if flag is not None:
            chosen[name] = _coerce(name, flag, f"--{name.replace('_', '-')}")
        elif environ.get(env_key) not in (None, ""):
            chosen[name] = _coerce(name, environ[env_key], env_key)
        elif name in file_values:
            chosen[name] = _coerce(name, file_values[name], str(config_file))
    settings = Settings(**chosen)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
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
    for table in settings.tables:
        if not re.fullmatch(r"[^.\s]+(\.[^.\s]+)?", table):
            raise ConfigError(f"table {table!r}: expected schema.table or table")


def require_dsn(settings: Settings) -> None:
    if not settings.dsn:
        raise ConfigError("no database given: pass --dsn, set CDC_DSN, or put dsn in the config file")
