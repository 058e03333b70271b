"""Settings declared once: every option through flag, environment and TOML, and the CLI around them.

No servers: `cdc start` and the other commands run through typer's CliRunner
up to the point where their `Settings` exist (`config.from_values` is wrapped
to hand them over and end the command), plus a few real subprocess runs for
exit codes and one-line errors.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from cdc import build, config
from cdc.cli import app, version
from cdc.config import OPTIONS, Option, Settings
from cdc.errors import ConfigError
from tests.support import cdc, error_line

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

#: Commands reading settings, with the arguments they need besides options.
SETTINGS_COMMANDS: dict[tuple[str, ...], list[str]] = {
    ("start",): [],
    ("stop",): [],
    ("status",): [],
    ("snapshot",): ["public.t"],
    ("consume",): ["cdc.public.t"],
    ("schemas", "export"): ["--out", "schemas-out"],
    ("doctor",): [],
    ("drop",): [],
}
#: Commands without settings: `--config` would be a flag that does nothing.
PLAIN_COMMANDS = {("dev", "up"), ("dev", "down")}
#: Commands with settings of their own (`cdc.sink.settings`; tests/test_sink_settings.py).
OWN_SETTINGS_COMMANDS = {("sink", "postgres")}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of the caller's CDC_* or libpq variables leaks into what is compared."""
    for variable in list(os.environ):
        ours = variable.startswith("CDC_") and not variable.startswith("CDC_TEST_")
        if ours or variable.startswith("PG"):
            monkeypatch.delenv(variable)


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Settings]]:
    """The `Settings` each command builds; the command ends there (exit 0)."""
    seen: list[Settings] = []
    real = config.from_values

    def handed_over(values: Any) -> Settings:
        settings = real(values)
        seen.append(settings)
        raise typer.Exit(0)

    monkeypatch.setattr(config, "from_values", handed_over)
    yield seen


def settings_of(built: list[Settings], *args: str, env: dict[str, str] | None = None) -> Settings:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return built[-1]


# -- sample values, for any declared type -----------------------------------------------------


def sample(option: Option, which: int, tmp_path: Path) -> Any:
    """A value of the option's type; ``which`` 0 is never the default, 0 and 1 differ."""
    kind = option.type
    if option.name == "skip_ops":
        return [["t", "u"], ["d"]][which]
    if option.name == "schema_registry_url":
        return f"http://registry{which}:8081"
    if option.choices:
        return option.choices[-1 - which]  # the default is listed first
    if kind is bool:
        return bool(option.value) != (which == 0)
    if kind is int:
        return int(option.value) + 3 + which  # type: ignore[call-overload]
    if kind is float:
        return float(option.value) + 2.5 + which  # type: ignore[arg-type]
    if kind in (Path, Path | None):
        return tmp_path / f"dir{which}"
    if kind == list[str]:
        return [f"m{which}.f:g", "n.o:p"] if option.name == "transforms" else [f"s.t{which}", "s.u"]
    if kind == dict[str, str] and option.name == "outbox_fields":
        return {"aggregateid": f"c{which}", "type": "kind"}
    if kind == dict[str, str]:
        return {"retention.ms": str(1000 + which), "b": "x"}
    if kind is config.TableColumns:
        return {f"s.t{which}": ["a", "b"], "s.u": ["c"]}
    if kind is config.TableConditions:
        return {f"s.t{which}": "a = 1, 2", "s.u": "b IN ('x', 'y')"}
    if kind is str:
        return f"host=h{which} password=pw" if option.name == "dsn" else f"v{which}_{option.name}"
    raise AssertionError(f"no sample for {option.name}: {kind}; teach sample() the new type")


def as_flag(option: Option, value: Any) -> list[str]:
    if option.type is bool:
        return [option.flag if value else f"--no-{option.flag[2:]}"]
    if option.type in (config.TableColumns, config.TableConditions):
        return [arg for k, v in value.items() for arg in (option.flag, f"{k}:{as_env(v)}")]
    if option.repeatable and isinstance(value, dict):
        return [arg for k, v in value.items() for arg in (option.flag, f"{k}={v}")]
    if option.repeatable:
        return [arg for v in value for arg in (option.flag, v)]
    if isinstance(value, list):
        return [option.flag, ",".join(value)]
    return [option.flag, str(value)]


def as_env(value: Any, option: Option | None = None) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if option is not None and option.type in (config.TableColumns, config.TableConditions):
        return ";".join(f"{k}:{as_env(v)}" for k, v in value.items())
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def as_toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(str(value))


def toml_file(tmp_path: Path, lines: dict[str, Any], name: str = "cdc.toml") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{key} = {as_toml(value)}\n" for key, value in lines.items()))
    return path


OPTION_NAMES = list(OPTIONS)


# -- the declarations -------------------------------------------------------------------------


def test_names_derive_from_the_flag() -> None:
    for option in OPTIONS.values():
        bare = option.flag.removeprefix("--")
        assert option.env == "CDC_" + bare.upper().replace("-", "_")
        if option.name != "kafka_config":  # the [kafka] table
            assert option.key == bare.replace("-", "_")
    assert OPTIONS["kafka_config"].key == "kafka"
    assert OPTIONS["topic_configs"].env == "CDC_TOPIC_CONFIG"
    assert OPTIONS["topic_configs"].flag == "--topic-config"
    assert OPTIONS["snapshot"].choices == ("initial", "never", "initial-only")
    assert OPTIONS["format"].choices == ("avro", "json")
    assert OPTIONS["producer"].choices == ("auto", "kafka-python", "confluent")
    assert {o.name for o in OPTIONS.values() if o.repeatable} == {
        "topic_configs", "producer_configs", "kafka_config", "columns", "exclude_columns", "mask_columns",
        "row_filters", "transforms", "outbox_fields", "outbox_headers", "schema_registry_config",
    }  # fmt: skip


def test_defaults_when_nothing_is_given(built: list[Settings]) -> None:
    assert settings_of(built, "start") == Settings()
    for option in OPTIONS.values():
        if option.name not in ("slot", "publication", "unavailable_placeholder"):  # derived
            assert getattr(Settings(), option.name) == option.value
    assert Settings().unavailable_placeholder == "__cdc_unavailable_value"
    assert Settings(compat="debezium").unavailable_placeholder == "__debezium_unavailable_value"


# -- every option from every source -----------------------------------------------------------


@pytest.mark.parametrize("name", OPTION_NAMES)
def test_option_from_flag_env_and_toml(name: str, built: list[Settings], tmp_path: Path) -> None:
    option = OPTIONS[name]
    value = sample(option, 0, tmp_path)
    assert value != option.value
    from_flag = settings_of(built, "start", *as_flag(option, value))
    assert getattr(from_flag, name) == value
    from_env = settings_of(built, "start", env={option.env: as_env(value, option)})
    assert getattr(from_env, name) == value
    for key in (option.key, option.key.replace("_", "-")):
        path = toml_file(tmp_path, {key: value})
        assert getattr(settings_of(built, "start", "--config", str(path)), name) == value
        assert config.resolve({}, path, environ={})[name] == value


@pytest.mark.parametrize("name", OPTION_NAMES)
def test_precedence_flag_env_file_default(name: str, built: list[Settings], tmp_path: Path) -> None:
    option = OPTIONS[name]
    first, second = sample(option, 0, tmp_path), sample(option, 1, tmp_path)
    assert first != second
    path = toml_file(tmp_path, {option.key: second})
    # the environment beats the file
    env_over_file = settings_of(
        built, "start", "--config", str(path), env={option.env: as_env(first, option)}
    )
    assert getattr(env_over_file, name) == first
    # the flag beats the environment
    flag_over_env = settings_of(
        built,
        "start",
        "--config",
        str(path),
        *as_flag(option, second),
        env={option.env: as_env(first, option)},
    )
    assert getattr(flag_over_env, name) == second
    # the file beats the default
    path = toml_file(tmp_path, {option.key: first})
    assert getattr(settings_of(built, "start", "--config", str(path)), name) == first


def test_repeatable_flags_keep_commas(built: list[Settings]) -> None:
    settings = settings_of(
        built, "start", "--topic-config", "cleanup.policy=compact,delete", "--topic-config", "a=1",
        "--producer-config", "linger.ms=5",
    )  # fmt: skip
    assert settings.topic_configs == {"cleanup.policy": "compact,delete", "a": "1"}
    assert settings.producer_configs == {"linger.ms": "5"}


def test_former_names_still_read_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cdc.config"):
        from_env = config.build({}, environ={"CDC_TOPIC_CONFIGS": "a=1", "CDC_PRODUCER_CONFIGS": "b=2"})
        path = toml_file(tmp_path, {"topic_configs": {"c": "3"}})
        from_file = config.build({}, path, environ={})
    assert from_env.topic_configs == {"a": "1"} and from_env.producer_configs == {"b": "2"}
    assert from_file.topic_configs == {"c": "3"}
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "CDC_TOPIC_CONFIGS is now CDC_TOPIC_CONFIG" in messages and "'topic_config'" in messages
    # the new name wins over the old one
    both = config.build({}, environ={"CDC_TOPIC_CONFIGS": "a=1", "CDC_TOPIC_CONFIG": "a=2"})
    assert both.topic_configs == {"a": "2"}


def test_one_key_twice_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "twice.toml"
    path.write_text('topic_prefix = "a"\ntopic-prefix = "b"\n')
    with pytest.raises(ConfigError, match=r"'topic_prefix' and 'topic-prefix' .* keep one"):
        config.build({}, path, environ={})


# -- bad values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [o.name for o in OPTIONS.values() if o.choices])
def test_a_bad_choice_is_a_usage_error(name: str) -> None:
    option = OPTIONS[name]
    result = runner.invoke(app, ["start", option.flag, "bogus"])
    assert result.exit_code == 2
    for choice in option.choices:
        assert repr(choice) in result.output
    with pytest.raises(ConfigError) as from_env:
        config.build({}, environ={option.env: "bogus"})
    assert str(from_env.value) == (
        f"{option.env} = 'bogus' from the environment: expected one of {', '.join(option.choices)}"
    )


def test_bad_values_as_users_see_them(tmp_path: Path) -> None:
    usage = cdc("start", "--format", "xml")
    assert usage.returncode == 2
    assert "'xml' is not one of 'avro', 'json'" in error_line(usage)
    from_env = cdc("start", env={"CDC_SNAPSHOT": "sometimes"})
    assert from_env.returncode == 1
    expected = "CDC_SNAPSHOT = 'sometimes' from the environment: expected one of initial, never, initial-only"
    assert expected in error_line(from_env)
    path = toml_file(tmp_path, {"producer": "fast"})
    from_file = cdc("start", "--config", str(path))
    assert from_file.returncode == 1
    assert f"producer = 'fast' from {path}: expected one of auto, kafka-python, confluent" in error_line(
        from_file
    )


def test_the_dsn_is_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "cdc.toml"
    path.write_text('dsn = ["host=db password=hunter2"]\n')
    with pytest.raises(ConfigError) as error:
        config.build({}, path, environ={})
    assert str(error.value) == f"dsn = *** from {path}: expected a string"


# -- libpq's variables ------------------------------------------------------------------------


def test_pg_variables_alone_name_the_database(tmp_path: Path) -> None:
    config.require_dsn(Settings(), environ={"PGHOST": "db", "PGDATABASE": "shop"})
    config.require_dsn(Settings(), environ={"PGSERVICE": "shop"})
    config.require_dsn(Settings(dsn="host=db"), environ={})
    with pytest.raises(
        ConfigError,
        match="no database given: pass --dsn or --dsn-file, set CDC_DSN, CDC_DSN_FILE or libpq's PGHOST",
    ):
        config.require_dsn(Settings(), environ={"PGAPPNAME": "x"})
    # accepted: libpq tries the address the variables name (nothing listens on port 1)
    proc = cdc("start", "--state-dir", str(tmp_path), env={"PGHOST": "127.0.0.1", "PGPORT": "1"})
    line = error_line(proc)
    assert "no database given" not in line and "127.0.0.1" in line and "port 1" in line
    assert "no database given" in error_line(cdc("start", "--state-dir", str(tmp_path)))


# -- the commands -----------------------------------------------------------------------------


def command_paths() -> list[tuple[str, ...]]:
    """Every command and group of `cdc`, as the words that call it (the root is ())."""
    paths: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(get_command(app), ())
    return paths


def leaf(path: tuple[str, ...]) -> Any:
    command: Any = get_command(app)
    for word in path:
        command = command.commands[word]
    return command


def test_every_command_is_classified() -> None:
    leaves = {p for p in command_paths() if not hasattr(leaf(p), "commands")}
    assert leaves == set(SETTINGS_COMMANDS) | PLAIN_COMMANDS | OWN_SETTINGS_COMMANDS


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "cdc")
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_on_every_command(path: tuple[str, ...], flag: str) -> None:
    result = runner.invoke(app, [*path, flag])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ") and "-h, --help" in result.output


@pytest.mark.parametrize("path", list(SETTINGS_COMMANDS), ids=" ".join)
def test_config_on_every_command(path: tuple[str, ...], built: list[Settings], tmp_path: Path) -> None:
    values = {
        "name": "from_file",
        "state_dir": tmp_path / "state",
        "bootstrap_servers": "file-broker:9092",
        "topic_prefix": "fromfile",
    }
    path_to_file = toml_file(tmp_path, values)
    settings = settings_of(built, *path, "--config", str(path_to_file), *SETTINGS_COMMANDS[path])
    used = {option.name for option in OPTIONS.values() if option.flag in options_of(path)}
    assert used, f"{' '.join(path)} takes no setting"
    for name in used & set(values):
        assert getattr(settings, name) == values[name]


def test_config_from_the_environment(built: list[Settings], tmp_path: Path) -> None:
    path = toml_file(tmp_path, {"name": "from_env_file"})
    assert settings_of(built, "status", env={"CDC_CONFIG": str(path)}).name == "from_env_file"


def options_of(path: tuple[str, ...]) -> set[str]:
    return {opt for param in leaf(path).params for opt in (*param.opts, *param.secondary_opts)}


@pytest.mark.parametrize(
    "path", [p for p in command_paths() if p and p not in OWN_SETTINGS_COMMANDS], ids=" ".join
)
def test_shared_options_come_from_the_declarations(path: tuple[str, ...]) -> None:
    declared = {option.flag: option for option in OPTIONS.values()}
    for param in leaf(path).params:
        for flag in param.opts:
            if flag in declared:
                assert param.name == declared[flag].name
                assert param.help.startswith(declared[flag].help)
    if path in SETTINGS_COMMANDS:
        assert "--config" in options_of(path)


def test_start_help_shows_defaults_and_variables() -> None:
    result = runner.invoke(app, ["start", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for option in OPTIONS.values():
        assert option.flag in text
        if option.repeatable:
            assert f"[env var: {option.env} ({option.env_form})]" in text
        else:
            assert f"[env var: {option.env}; default: {option.default}]" in text
    assert "--snapshot <initial|never|initial-only>" in text
    assert "--tombstones / --no-tombstones" in text


def test_version() -> None:
    try:
        installed = importlib.metadata.version("cdc")
    except importlib.metadata.PackageNotFoundError:
        installed = importlib.metadata.version("pgcdc")
    assert version() == installed
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"cdc {installed} ({build()})\n"
    proc = cdc("--version")
    assert proc.returncode == 0 and proc.stdout == f"cdc {installed} ({build()})\n"


def test_readme_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings table:")
    start = readme.index("\n", start) + 1
    end = readme.index("<!-- end of settings table -->")
    assert readme[start:end].strip() == config.markdown_table().strip(), (
        "README.md's settings table is stale: replace it with the output of "
        "`.venv/bin/python -c 'import cdc.config as c; print(c.markdown_table())'`"
    )
