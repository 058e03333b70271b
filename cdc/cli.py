"""The ``cdc`` command. Thin: parse, call one function of the modules, print.

The options of the settings are not written here: `with_settings` adds them
to a command from their declarations (`cdc.config.OPTIONS`), and the command
hands what it received to `cdc.config.build`. Expected failures are
`CdcError`s; `main` prints their one-line message on stderr and exits 1 (a
traceback only with ``--debug``); usage errors exit 2.
"""

from __future__ import annotations

import enum
import importlib.metadata
import inspect
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import typer

import cdc
from cdc import config, logs, redact
from cdc.config import Option, Settings
from cdc.errors import AlreadyRunning, CdcError, ConfigError
from cdc.sink.settings import SINK_OPTIONS

_HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}  # inherited by every subcommand

app = typer.Typer(
    name="cdc",
    help="Change data capture from PostgreSQL to Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings=_HELP_OPTIONS,
    rich_markup_mode=None,
)
dev_app = typer.Typer(
    help="Local Postgres and broker for trying cdc out.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(dev_app, name="dev")

_debug = False


def version() -> str:
    """The installed distribution's version (it is to be renamed pgcdc), else the package's own."""
    for distribution in ("pgcdc", "cdc"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    from cdc import __version__  # noqa: PLC0415

    return __version__


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"cdc {version()} ({cdc.build()})")
        raise typer.Exit


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    _version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    global _debug
    _debug = debug or os.environ.get("CDC_DEBUG", "") not in ("", "0")
    logging.basicConfig(
        level=logging.DEBUG if _debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    redact.install()


# -- the declared settings as options --------------------------------------------------------

Command = TypeVar("Command", bound=Callable[..., None])

_CONFIG = inspect.Parameter(
    "config",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML file with any of the settings below (keys: their flags' names).",
            envvar="CDC_CONFIG",
        ),
    ],
)


def _parameter(option: Option) -> inspect.Parameter:
    """The typer option of a declared setting. None when not given: the environment and file fill it."""
    decls = [option.flag]
    kind: Any = option.type | None
    if option.repeatable:
        kind = list[str] | None
    elif option.type is bool:
        decls = [f"{option.flag}/--no-{option.flag.removeprefix('--')}"]
    elif option.type == list[str]:
        kind = str | None  # a,b,c
    # click's own layout, without the parentheses it puts around a default that is not the value
    # (the option's default is None, which lets the environment and the file fill it)
    text = f"{option.help}  [env var: {option.env}; default: {option.default}]"
    metavar = None
    if option.repeatable:
        each = "table" if option.type in (config.TableColumns, config.TableConditions) else "value"
        each = "pair" if option.type == dict[str, str] else each
        text = f"{option.help} Once per {each}.  [env var: {option.env} ({option.env_form})]"
        metavar = option.metavar
    info = typer.Option(*decls, help=text, show_default=False, metavar=metavar)
    return inspect.Parameter(
        option.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=cast(Any, Annotated)[kind, info]
    )


def with_settings(*names: str, options: Mapping[str, Option] | None = None) -> Callable[[Command], Command]:
    """Give a command ``--config`` and the options of the settings ``names`` (every one when none).

    The command takes them as ``**flags``, by field name, None when not given;
    `_settings` turns them into `Settings`. Its own parameters come after them.
    ``options``: another command's declarations (`cdc.sink.settings.SINK_OPTIONS`).
    """
    options = config.OPTIONS if options is None else options

    def add(command: Command) -> Command:
        own = inspect.signature(command, eval_str=True).parameters.values()
        declared = [options[name] for name in names] if names else list(options.values())
        parameters = [
            _CONFIG,
            *map(_parameter, declared),
            *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.kind is not p.VAR_KEYWORD),
        ]
        cast(Any, command).__signature__ = inspect.Signature(parameters, return_annotation=None)
        return command

    return add


def _config_file(flags: Mapping[str, object]) -> Path | None:
    path = flags.get("config")
    return path if isinstance(path, Path) else None


def _settings(flags: Mapping[str, object]) -> Settings:
    return config.build(flags, _config_file(flags))


# -- start / stop / status -------------------------------------------------------------


@app.command()
@with_settings()
def start(
    detach: Annotated[
        bool, typer.Option("--detach", help="Run in the background (log in the state dir).")
    ] = False,
    **flags: object,
) -> None:
    """Stream changes from Postgres to Kafka until stopped."""
    from cdc import control, metrics  # noqa: PLC0415
    from cdc.connector import Connector  # noqa: PLC0415
    from cdc.kafka import client_config  # noqa: PLC0415

    settings = _settings(flags)
    config.require_dsn(settings)
    client_config(settings)  # a bad Kafka setting fails here, before anything is made in Postgres
    directory = settings.instance_dir
    if detach:
        if control.running_pid(directory) is not None:
            raise AlreadyRunning(f"connector {settings.name!r} is already running")
        argv = [a for a in sys.argv[1:] if a != "--detach"]
        log_file = Path(settings.log_file) if settings.log_file else directory / "cdc.log"
        if not settings.log_file:
            argv += ["--log-file", str(log_file)]  # rotated by the connector itself
        pid = control.detach(argv, directory, settings.name, log_path=log_file)
        typer.echo(f"started {settings.name} (pid {pid}); log: {log_file}")
        return
    _configure_logs(settings)
    with control.InstanceLock(directory, settings.name):
        connector = Connector(settings, publish=control.status_writer(directory, settings.name))
        with metrics.serve(settings, connector.status, version()):
            control.install_signal_handlers(connector.stop, connector.stop_now)
            connector.run()


def _configure_logs(settings: Settings) -> None:
    logs.configure(
        settings.log_format,
        settings.log_level,
        settings.log_file,
        settings.log_max_mb,
        settings.log_backups,
        debug=_debug,
    )


@app.command()
@with_settings("name", "state_dir")
def stop(
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for a graceful stop.")] = 60.0,
    **flags: object,
) -> None:
    """Stop a running connector gracefully (flush, confirm, exit)."""
    from cdc import control  # noqa: PLC0415

    settings = _settings(flags)
    pid = control.request_stop(settings.instance_dir, settings.name, timeout)
    typer.echo(f"stopped {settings.name} (pid {pid})")


@app.command()
@with_settings("name", "state_dir")
def status(
    json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
    **flags: object,
) -> None:
    """Show a connector's state, positions and event counts.

    Exit code: 0 running, 1 failed (or killed), 3 stopped or never started.
    """
    import orjson  # noqa: PLC0415

    from cdc import control  # noqa: PLC0415

    settings = _settings(flags)
    info = control.read_status(settings.instance_dir, settings.name)
    code = control.status_exit_code(info)
    if json:
        typer.echo(orjson.dumps(info).decode())
        raise typer.Exit(code)
    typer.echo(f"{settings.name}: {info.get('state')} (pid {info.get('pid') or '-'})")
    typer.echo(f"  slot           {info.get('slot') or '-'}")
    typer.echo(f"  received lsn   {info.get('received_lsn') or '-'}")
    typer.echo(f"  confirmed lsn  {info.get('confirmed_lsn') or '-'}")
    lag_bytes = info.get("lag_bytes")
    lag_seconds = info.get("lag_seconds")
    typer.echo(
        f"  lag            {lag_bytes if lag_bytes is not None else '-'} bytes, "
        f"{f'{lag_seconds:.1f}' if lag_seconds is not None else '-'} s"
    )
    latency = info.get("latency_ms") or {}
    if latency.get("samples"):
        typer.echo(
            f"  latency        p50 {latency['p50']} ms, p99 {latency['p99']} ms (commit to ack, "
            f"{latency['samples']} transactions)"
        )
    if info.get("slot_wal_status"):
        safe = info.get("slot_safe_wal_size")
        typer.echo(
            f"  slot wal       {info['slot_wal_status']}"
            + (f", {safe:,} bytes before it is lost" if isinstance(safe, int) else "")
        )
    typer.echo(f"  events         {info.get('events_total', 0)}")
    for table, count in sorted((info.get("events_per_table") or {}).items()):
        typer.echo(f"    {table:<30} {count}")
    captured = info.get("tables") or []
    if captured:
        typer.echo(f"  tables         {len(captured)} captured: {', '.join(captured[:20])}"
                   + (f" and {len(captured) - 20} more" if len(captured) > 20 else ""))  # fmt: skip
    shaping = info.get("shaping") or {}
    if shaping.get("filtered"):
        typer.echo(f"  filtered       {shaping['filtered']} events dropped by transforms")
    for name, n in sorted(shaping.items()):
        kind, _, what = name.partition(":")
        if kind == "dead_letters":
            typer.echo(f"  dead letters   {n} ({what})")
        elif kind == "transform_errors":
            typer.echo(f"  transform errs {n} ({what})")
    snapshot = info.get("snapshot") or {}
    if snapshot.get("phase") == "running":
        for table, progress in sorted((snapshot.get("tables") or {}).items()):
            typer.echo(
                f"  snapshot       {table}: {progress['rows']} of ~{progress['estimate']} rows, "
                f"{progress['chunks_done']} of {progress['chunks']} chunks in kafka"
            )
    for task in snapshot.get("incremental") or []:
        typer.echo(f"  incremental    {task['table']}: {task['rows']} rows so far")
    if snapshot.get("phase") == "interrupted":
        typer.echo("  snapshot       interrupted: the next start resumes it")
    if info.get("last_error"):
        typer.echo(f"  last error     {info['last_error']}")
    if info.get("state") in ("failed", "stopped") and info.get("ended_at"):
        ended = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(info["ended_at"]))
        typer.echo(f"  {info['state']:<14} {ended}")
    raise typer.Exit(code)


@app.command("snapshot")
@with_settings("name", "state_dir")
def snapshot_tables(
    tables: Annotated[list[str], typer.Argument(help="schema.table to read again (one or more).")],
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the connector to take the request.")
    ] = 30.0,
    **flags: object,
) -> None:
    """Re-read tables of a running connector in chunks while it keeps streaming (incremental snapshot)."""
    from cdc import control  # noqa: PLC0415

    settings = _settings(flags)
    result = control.request_snapshot(settings.instance_dir, settings.name, tables, timeout)
    if not result.answered:
        typer.echo(f"queued for {settings.name}: it takes the request once it streams")
        return
    if result.accepted:
        typer.echo(f"{settings.name} snapshots {', '.join(result.accepted)} while streaming")
    if result.rejected:
        raise ConfigError("; ".join(result.rejected.values()))


@app.command()
@with_settings()
def doctor(
    json: Annotated[bool, typer.Option("--json", help="One JSON object, for scripts.")] = False,
    **flags: object,
) -> None:
    """Check the server (and broker) before starting: each problem with its fix. Exit 1 on a failure."""
    import orjson  # noqa: PLC0415

    from cdc import doctor as checks  # noqa: PLC0415

    given = config.resolve(flags, _config_file(flags))
    settings = config.from_values(given)
    config.require_dsn(settings)
    _quiet_kafka()
    found = checks.run(settings, check_kafka="bootstrap_servers" in given)
    if json:
        typer.echo(orjson.dumps(checks.as_json(found)).decode())
    else:
        checks.render(found)
    if checks.failed(found):
        raise typer.Exit(1)


@app.command()
@with_settings()
def drop(
    keep_publication: Annotated[
        bool, typer.Option("--keep-publication", help="Keep the publication even if cdc created it.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for a running connector to stop.")
    ] = 60.0,
    **flags: object,
) -> None:
    """Remove a connector: stop it, drop its slot and its publication (if cdc made it), delete its state."""
    from cdc import slots  # noqa: PLC0415

    settings = _settings(flags)
    config.require_dsn(settings)
    what = (
        f"connector {settings.name}: slot {settings.slot}, "
        + ("" if keep_publication else f"publication {settings.publication} (if cdc created it), ")
        + f"state {settings.instance_dir}"
    )
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"cdc drop removes {what}: pass --yes to confirm (stdin is not a terminal)")
        if not typer.confirm(f"Remove {what}? Changes not yet streamed are lost", default=False):
            raise typer.Exit(1)
    for line in slots.drop_connector(settings, keep_publication, timeout):
        typer.echo(line)


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

schemas_app = typer.Typer(
    help="The Avro schemas on the schema topic.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(schemas_app, name="schemas")


def _quiet_kafka() -> None:
    """kafka-python logs every connection attempt: its failures reach the user as our one-line errors."""
    if not _debug:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


class Isolation(enum.StrEnum):
    read_committed = "read_committed"
    read_uncommitted = "read_uncommitted"


@app.command("consume")
@with_settings(
    "bootstrap_servers",
    "kafka_config",
    "kafka_config_file",
    "topic_prefix",
    "schema_registry_url",
    "schema_registry_config",
)
def consume(
    topics: Annotated[list[str], typer.Argument(help="Topics to read (<prefix>.<schema>.<table>, ...).")],
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
    isolation: Annotated[
        Isolation,
        typer.Option(
            "--isolation",
            help="read_committed: only what committed Kafka transactions wrote (exactly once from an "
            "exactly-once connector); read_uncommitted: aborted records too.",
            envvar="CDC_ISOLATION",
        ),
    ] = Isolation.read_committed,
    **flags: object,
) -> None:
    """Print records as JSON lines {"topic", "partition", "offset", "key", "value"}; bad ones on stderr.

    Avro, JSON and Schema Registry records alike. The schemas are read from PREFIX.schemas (without a
    topic prefix set, it is guessed from the topics), or by id from --schema-registry-url.
    """
    from cdc.consume import ChangeConsumer  # noqa: PLC0415
    from cdc.kafka import client_config  # noqa: PLC0415
    from cdc.schema_registry import open_registry  # noqa: PLC0415

    given = config.resolve(flags, _config_file(flags))
    settings = config.from_values(given)
    _quiet_kafka()
    registry = open_registry(settings.schema_registry_url, settings.schema_registry_config)
    try:
        with ChangeConsumer(
            topics,
            client_config(settings),
            topic_prefix=given.get("topic_prefix"),
            from_beginning=from_beginning,
            group=group,
            isolation=isolation.value,
            registry_client=registry,
        ) as consumer:
            for record in consumer.records(max_messages, idle_timeout):
                if record.error is None:
                    typer.echo(record.to_json().decode())
                else:
                    typer.echo(f"cdc: {record.error}", err=True)
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if registry is not None:
            registry.close()


@schemas_app.command("export")
@with_settings("bootstrap_servers", "kafka_config", "kafka_config_file", "topic_prefix")
def schemas_export(
    out: Annotated[
        Path, typer.Option("--out", help="Directory for the .avsc files.", envvar="CDC_SCHEMAS_OUT")
    ],
    **flags: object,
) -> None:
    """Write every schema registered on PREFIX.schemas to OUT/<subject>.v<version>.avsc."""
    from cdc.consume import export_schemas  # noqa: PLC0415
    from cdc.kafka import client_config  # noqa: PLC0415

    settings = _settings(flags)
    _quiet_kafka()
    for path in export_schemas(client_config(settings), settings.topic_prefix, out):
        typer.echo(str(path))


# -- sink (issue 20) ---------------------------------------------------------------------------

sink_app = typer.Typer(
    help="Apply change topics to a database, exactly once in effect.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(sink_app, name="sink")


@sink_app.command("postgres")
@with_settings(options=SINK_OPTIONS)
def sink_postgres(**flags: object) -> None:
    """Keep tables of a target Postgres equal to the source's: every change of --topics applied once,
    with its position, in the target's transactions. Runs until stopped (SIGTERM, Ctrl-C) or --until.

    Sink settings read CDC_SINK_<FLAG> and the [sink] table of --config; the Kafka settings are the
    connector's (CDC_BOOTSTRAP_SERVERS, [kafka], ...).
    """
    from cdc.sink import runner  # noqa: PLC0415
    from cdc.sink import settings as sink_settings  # noqa: PLC0415

    settings = sink_settings.build(flags, _config_file(flags))
    sink_settings.require_dsn(settings)
    logs.configure(settings.log_format, settings.log_level, debug=_debug)
    _quiet_kafka()
    stats = runner.run(settings)
    if stats.reached_until:
        typer.echo(f"applied every change before --until {settings.until}: {stats.applied} changes")


def main() -> None:
    """Entry point: every expected failure is one line on stderr and a non-zero exit."""
    try:
        result = app(prog_name="cdc", standalone_mode=False)
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
        line = redact.redact(" ".join(str(exc).split()))
        if logs.to_file():  # a detached connector: its log says why it ended too
            logging.getLogger("cdc").error("%s", line)
        print(f"cdc: error: {line}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
