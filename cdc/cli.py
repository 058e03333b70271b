"""The ``cdc`` command. Thin: parse, call one function of the modules, print.

Expected failures are `CdcError`s; `main` prints their one-line message on
stderr and exits 1 (a traceback only with ``--debug``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from cdc.config import Settings
from cdc.errors import AlreadyRunning, CdcError, ConfigError

app = typer.Typer(
    name="cdc",
    help="Change data capture from PostgreSQL to Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
dev_app = typer.Typer(help="Local Postgres and broker for trying cdc out.", no_args_is_help=True)
app.add_typer(dev_app, name="dev")

_debug = False


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    global _debug
    _debug = debug or os.environ.get("CDC_DEBUG", "") not in ("", "0")
    logging.basicConfig(
        level=logging.DEBUG if _debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# -- start / stop / status -------------------------------------------------------------

Name = Annotated[
    str | None, typer.Option("--name", help="Connector name (state, slot and publication default to it).")
]
StateDir = Annotated[
    Path | None, typer.Option("--state-dir", help="Where connectors keep offsets and status.")
]


def _settings(flags: dict[str, object], config: Path | None) -> Settings:
    from cdc import config as config_module  # noqa: PLC0415

    return config_module.build(flags, config)


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def start(
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file with any of these settings.")
    ] = None,
    dsn: Annotated[
        str | None, typer.Option("--dsn", help="Postgres connection string (env CDC_DSN).")
    ] = None,
    bootstrap_servers: Annotated[
        str | None, typer.Option("--bootstrap-servers", help="Kafka brokers, host:port,...")
    ] = None,
    name: Name = None,
    tables: Annotated[
        str | None, typer.Option("--tables", help="schema.table,... to capture (default: all).")
    ] = None,
    topic_prefix: Annotated[
        str | None, typer.Option("--topic-prefix", help="Topics are PREFIX.schema.table.")
    ] = None,
    slot: Annotated[str | None, typer.Option("--slot", help="Replication slot (default cdc_NAME).")] = None,
    publication: Annotated[
        str | None, typer.Option("--publication", help="Publication (default cdc_NAME).")
    ] = None,
    snapshot: Annotated[str | None, typer.Option("--snapshot", help="initial | never | initial-only")] = None,
    format: Annotated[str | None, typer.Option("--format", help="avro | json")] = None,
    state_dir: StateDir = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Run in the background (log in the state dir).")
    ] = False,
    status_interval: Annotated[
        float | None, typer.Option("--status-interval", help="Seconds between confirmations.")
    ] = None,
    tombstones: Annotated[
        bool | None, typer.Option("--tombstones/--no-tombstones", help="Tombstone after each delete.")
    ] = None,
    messages: Annotated[
        bool | None, typer.Option("--messages/--no-messages", help="Stream pg_logical_emit_message.")
    ] = None,
    transaction_metadata: Annotated[
        bool | None,
        typer.Option(
            "--transaction-metadata/--no-transaction-metadata",
            help="BEGIN/END records of every transaction on PREFIX.transaction.",
        ),
    ] = None,
    heartbeat_interval: Annotated[
        float | None,
        typer.Option("--heartbeat-interval", help="Seconds between PREFIX.heartbeat records (0: none)."),
    ] = None,
    producer: Annotated[
        str | None,
        typer.Option("--producer", help="auto | kafka-python | confluent (auto: confluent when installed)"),
    ] = None,
    topic_partitions: Annotated[
        int | None, typer.Option("--topic-partitions", help="Partitions of new topics.")
    ] = None,
    topic_replication_factor: Annotated[
        int | None,
        typer.Option("--topic-replication-factor", help="Replicas of new topics (-1: broker default)."),
    ] = None,
    topic_config: Annotated[
        list[str] | None, typer.Option("--topic-config", help="key=value for new topics (repeatable).")
    ] = None,
    producer_config: Annotated[
        list[str] | None, typer.Option("--producer-config", help="key=value producer setting (repeatable).")
    ] = None,
    unavailable_placeholder: Annotated[
        str | None,
        typer.Option("--unavailable-placeholder", help="Stands for unchanged TOAST values not sent."),
    ] = None,
    max_buffer_mb: Annotated[
        int | None, typer.Option("--max-buffer-mb", help="Producer buffer; reading pauses when full.")
    ] = None,
    snapshot_workers: Annotated[
        int | None, typer.Option("--snapshot-workers", help="Processes reading the initial snapshot.")
    ] = None,
    snapshot_chunk_rows: Annotated[
        int | None, typer.Option("--snapshot-chunk-rows", help="Rows per snapshot chunk (key order).")
    ] = None,
) -> None:
    """Stream changes from Postgres to Kafka until stopped."""
    from cdc import config as config_module  # noqa: PLC0415
    from cdc import control  # noqa: PLC0415
    from cdc.connector import Connector  # noqa: PLC0415

    flags: dict[str, object] = {
        "dsn": dsn, "bootstrap_servers": bootstrap_servers, "name": name, "tables": tables,
        "topic_prefix": topic_prefix, "slot": slot, "publication": publication, "snapshot": snapshot,
        "format": format, "state_dir": state_dir, "status_interval": status_interval,
        "tombstones": tombstones, "messages": messages, "producer": producer,
        "transaction_metadata": transaction_metadata, "heartbeat_interval": heartbeat_interval,
        "topic_partitions": topic_partitions, "topic_replication_factor": topic_replication_factor,
        "topic_configs": ",".join(topic_config) if topic_config else None,
        "producer_configs": ",".join(producer_config) if producer_config else None,
        "unavailable_placeholder": unavailable_placeholder, "max_buffer_mb": max_buffer_mb,
        "snapshot_workers": snapshot_workers, "snapshot_chunk_rows": snapshot_chunk_rows,
    }  # fmt: skip
    settings = _settings(flags, config)
    config_module.require_dsn(settings)
    directory = settings.instance_dir
    if detach:
        if control.running_pid(directory) is not None:
            raise AlreadyRunning(f"connector {settings.name!r} is already running")
        argv = [a for a in sys.argv[1:] if a != "--detach"]
        pid = control.detach(argv, directory, settings.name)
        typer.echo(f"started {settings.name} (pid {pid}); log: {directory / 'cdc.log'}")
        return
    with control.InstanceLock(directory, settings.name):
        connector = Connector(settings, publish=control.status_writer(directory, settings.name))
        control.install_signal_handlers(connector.stop, connector.stop_now)
        connector.run()


@app.command()
def stop(
    name: Name = None,
    state_dir: StateDir = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for a graceful stop.")] = 60.0,
) -> None:
    """Stop a running connector gracefully (flush, confirm, exit)."""
    from cdc import control  # noqa: PLC0415

    settings = _settings({"name": name, "state_dir": state_dir}, None)
    pid = control.request_stop(settings.instance_dir, settings.name, timeout)
    typer.echo(f"stopped {settings.name} (pid {pid})")


@app.command()
def status(
    name: Name = None,
    state_dir: StateDir = None,
    json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
) -> None:
    """Show a connector's state, positions and event counts."""
    import orjson  # noqa: PLC0415

    from cdc import control  # noqa: PLC0415

    settings = _settings({"name": name, "state_dir": state_dir}, None)
    info = control.read_status(settings.instance_dir, settings.name)
    if json:
        typer.echo(orjson.dumps(info).decode())
        return
    typer.echo(f"{settings.name}: {info.get('state')} (pid {info.get('pid') or '-'})")
    typer.echo(f"  slot           {info.get('slot') or '-'}")
    typer.echo(f"  received lsn   {info.get('received_lsn') or '-'}")
    typer.echo(f"  confirmed lsn  {info.get('confirmed_lsn') or '-'}")
    typer.echo(
        f"  lag            {info.get('lag_bytes') if info.get('lag_bytes') is not None else '-'} bytes"
    )
    typer.echo(f"  events         {info.get('events_total', 0)}")
    for table, count in sorted((info.get("events_per_table") or {}).items()):
        typer.echo(f"    {table:<30} {count}")
    snapshot = info.get("snapshot") or {}
    if snapshot.get("phase") == "running":
        for table, progress in sorted((snapshot.get("tables") or {}).items()):
            typer.echo(
                f"  snapshot       {table}: {progress['rows']} of ~{progress['estimate']} rows, "
                f"{progress['chunks_done']} of {progress['chunks']} chunks in kafka"
            )
    for task in snapshot.get("incremental") or []:
        typer.echo(f"  incremental    {task['table']}: {task['rows']} rows so far")
    if info.get("last_error"):
        typer.echo(f"  last error     {info['last_error']}")


@app.command("snapshot")
def snapshot_tables(
    tables: Annotated[list[str], typer.Argument(help="schema.table to read again (one or more).")],
    name: Name = None,
    state_dir: StateDir = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the connector to take the request.")
    ] = 30.0,
) -> None:
    """Re-read tables of a running connector in chunks while it keeps streaming (incremental snapshot)."""
    from cdc import control  # noqa: PLC0415

    settings = _settings({"name": name, "state_dir": state_dir}, None)
    result = control.request_snapshot(settings.instance_dir, settings.name, tables, timeout)
    if not result.answered:
        typer.echo(f"queued for {settings.name}: it takes the request once it streams")
        return
    if result.accepted:
        typer.echo(f"{settings.name} snapshots {', '.join(result.accepted)} while streaming")
    if result.rejected:
        raise ConfigError("; ".join(result.rejected.values()))


DevDir = Annotated[
    Path,
    typer.Option("--dir", help="Where the dev servers keep data and state.", envvar="CDC_DEV_DIR"),
]


@dev_app.command("up")
def dev_up(directory: DevDir = Path(".cdc-dev")) -> None:
    """Start a local Postgres and broker; print their addresses as shell variables."""
    from cdc import dev  # noqa: PLC0415 - keeps `cdc --help` fast

    env = dev.up(directory)
    for key, value in env.items():
        typer.echo(f"export {key}='{value}'")


@dev_app.command("down")
def dev_down(directory: DevDir = Path(".cdc-dev")) -> None:
    """Stop what `cdc dev up` started and delete its data."""
    from cdc import dev  # noqa: PLC0415

    dev.down(directory)


# -- consume, schemas export (issue 6) --------------------------------------------------------

schemas_app = typer.Typer(help="The Avro schemas on the schema topic.", no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")


def _quiet_kafka() -> None:
    """kafka-python logs every connection attempt: its failures reach the user as our one-line errors."""
    if not _debug:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


BootstrapServers = Annotated[
    str,
    typer.Option(
        "--bootstrap-servers", help="Kafka brokers, host:port[,host:port].", envvar="CDC_BOOTSTRAP_SERVERS"
    ),
]


@app.command("consume")
def consume(
    topics: Annotated[list[str], typer.Argument(help="Topics to read (<prefix>.<schema>.<table>, ...).")],
    bootstrap_servers: BootstrapServers = "localhost:9092",
    from_beginning: Annotated[
        bool,
        typer.Option(
            "--from-beginning", help="Start at the oldest record, not the end.", envvar="CDC_FROM_BEGINNING"
        ),
    ] = False,
    max_messages: Annotated[
        int | None,
        typer.Option("--max-messages", min=1, help="Stop after N records.", envvar="CDC_MAX_MESSAGES"),
    ] = None,
    idle_timeout: Annotated[
        float | None,
        typer.Option(
            "--idle-timeout", min=0, help="Stop when no record came for SECONDS.", envvar="CDC_IDLE_TIMEOUT"
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option("--group", help="Consume in this consumer group (commits offsets).", envvar="CDC_GROUP"),
    ] = None,
    topic_prefix: Annotated[
        str | None,
        typer.Option(
            "--topic-prefix",
            help="Where the schemas are (<prefix>.schemas); guessed from the topic names if not given.",
            envvar="CDC_TOPIC_PREFIX",
        ),
    ] = None,
) -> None:
    """Print records as JSON lines {"topic", "partition", "offset", "key", "value"}; bad ones on stderr."""
    from cdc.consume import ChangeConsumer  # noqa: PLC0415

    _quiet_kafka()
    try:
        with ChangeConsumer(
            topics,
            bootstrap_servers,
            topic_prefix=topic_prefix,
            from_beginning=from_beginning,
            group=group,
        ) as consumer:
            for record in consumer.records(max_messages, idle_timeout):
                if record.error is None:
                    typer.echo(record.to_json().decode())
                else:
                    typer.echo(f"cdc: {record.error}", err=True)
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@schemas_app.command("export")
def schemas_export(
    out: Annotated[
        Path, typer.Option("--out", help="Directory for the .avsc files.", envvar="CDC_SCHEMAS_OUT")
    ],
    topic_prefix: Annotated[
        str,
        typer.Option("--topic-prefix", help="The schemas of <prefix>.schemas.", envvar="CDC_TOPIC_PREFIX"),
    ] = "cdc",
    bootstrap_servers: BootstrapServers = "localhost:9092",
) -> None:
    """Write every registered schema to OUT/<subject>.v<version>.avsc."""
    from cdc.consume import export_schemas  # noqa: PLC0415

    _quiet_kafka()
    for path in export_schemas(bootstrap_servers, topic_prefix, out):
        typer.echo(str(path))


def main() -> None:
    """Entry point: every expected failure is one line on stderr and a non-zero exit."""
    try:
        result = app(standalone_mode=False)
    except typer.TyperException as exc:  # usage errors: unknown flag, bad value
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        if exc.format_message():  # empty when the help was shown for a bare command
            print(f"cdc: error: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except CdcError as exc:
        if _debug:
            raise
        # one line, whatever the message carries (libpq's own messages have line breaks)
        print(f"cdc: error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
