"""The sink's settings, declared once: every option by flag, ``CDC_SINK_*`` and the ``[sink]`` table,
the Kafka settings shared with the connector, and the errors of `cdc sink postgres` before it connects."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cdc import config
from cdc.cli import app
from cdc.errors import ConfigError
from cdc.events import UNAVAILABLE_PLACEHOLDER
from cdc.sink import settings as sink_settings
from cdc.sink.settings import SINK_OPTIONS, SinkSettings, parse_until
from tests.support import cdc, error_line
from tests.test_settings import as_env, as_flag, as_toml, sample

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
COMMAND = ["sink", "postgres"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in list(os.environ):
        if (variable.startswith("CDC_") and not variable.startswith("CDC_TEST_")) or variable.startswith(
            "PG"
        ):
            monkeypatch.delenv(variable)


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[SinkSettings]]:
    """The `SinkSettings` the command builds; it ends there (exit 0)."""
    seen: list[SinkSettings] = []
    real = sink_settings.from_values

    def handed_over(values: Any) -> SinkSettings:
        settings = real({"topics": ["p.s.t"], **values})
        seen.append(settings)
        raise typer.Exit(0)

    monkeypatch.setattr(sink_settings, "from_values", handed_over)
    yield seen


def settings_of(built: list[SinkSettings], *args: str, env: dict[str, str] | None = None) -> SinkSettings:
    result = runner.invoke(app, [*COMMAND, *args], env=env)
    assert result.exit_code == 0, result.output
    return built[-1]


def sink_toml(tmp_path: Path, own: dict[str, Any], top: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "cdc.toml"
    text = "".join(f"{k} = {as_toml(v)}\n" for k, v in (top or {}).items())
    text += "[sink]\n" + "".join(f"{k} = {as_toml(v)}\n" for k, v in own.items())
    path.write_text(text)
    return path


def test_the_names() -> None:
    for option in SINK_OPTIONS.values():
        bare = option.flag.removeprefix("--").upper().replace("-", "_")
        assert option.env == (f"CDC_{bare}" if option.shared else f"CDC_SINK_{bare}")
    shared = {o.name for o in SINK_OPTIONS.values() if o.shared}
    assert shared == {
        "bootstrap_servers",
        "kafka_config",
        "kafka_config_file",
        "unavailable_placeholder",
        "log_format",
        "log_level",
    }
    for name in shared:  # the connector's own declaration, not a copy of its words
        assert SINK_OPTIONS[name].help == config.OPTIONS[name].help
    assert SinkSettings().unavailable_placeholder == UNAVAILABLE_PLACEHOLDER


@pytest.mark.parametrize("name", [n for n in SINK_OPTIONS if n != "topics"])
def test_option_from_flag_env_and_toml(name: str, built: list[SinkSettings], tmp_path: Path) -> None:
    option = SINK_OPTIONS[name]
    value = sample(option, 0, tmp_path)
    if name == "until":
        value = "0/16B3748"
    if name == "positions_table":
        value = "sink.positions"
    if name == "table_map":
        value = {"public.a": "copy.a"}
    assert getattr(settings_of(built, *as_flag(option, value)), name) == value
    assert getattr(settings_of(built, env={option.env: as_env(value)}), name) == value
    path = sink_toml(
        tmp_path, {} if option.shared else {option.key: value}, {option.key: value} if option.shared else {}
    )
    assert getattr(settings_of(built, "--config", str(path)), name) == value


def test_the_connectors_dsn_is_not_the_targets(built: list[SinkSettings], tmp_path: Path) -> None:
    env = {"CDC_DSN": "dbname=source", "CDC_SINK_DSN": "dbname=target", "CDC_BOOTSTRAP_SERVERS": "k:9092"}
    settings = settings_of(built, env=env)
    assert settings.dsn == "dbname=target" and settings.bootstrap_servers == "k:9092"
    # one file for both: the connector's keys at the top, the sink's in [sink]
    path = sink_toml(
        tmp_path,
        {"dsn": "dbname=target", "topics": ["shop.public.orders"], "group": "shipping"},
        {
            "dsn": "dbname=source",
            "bootstrap_servers": "kafka:9092",
            "tables": ["public.orders"],
            "name": "shop",
        },
    )
    settings = settings_of(built, "--config", str(path))
    assert (settings.dsn, settings.topics, settings.group) == (
        "dbname=target",
        ["shop.public.orders"],
        "shipping",
    )
    assert settings.bootstrap_servers == "kafka:9092"
    connector = config.build({}, path, environ={})
    assert (connector.dsn, connector.name) == ("dbname=source", "shop")


def test_an_unknown_key_in_sink(tmp_path: Path) -> None:
    path = sink_toml(tmp_path, {"topic": "x"})
    with pytest.raises(ConfigError, match=r"unknown key 'topic' in \[sink\] of config file"):
        sink_settings.build({}, path, environ={})


def test_until() -> None:
    assert parse_until("") is None
    assert parse_until("16/B374D848") is not None and parse_until("16/B374D848").lsn == 0x16B374D848  # type: ignore[union-attr]
    moment = parse_until("2026-11-25T10:00:00Z")
    assert moment is not None and moment.time_ms == 1795600800000
    assert parse_until("2026-11-25T10:00:00") == moment  # no zone: UTC
    assert parse_until("2026-11-25T11:00:00+01:00") == moment
    assert moment.passed(0, 1795600800001) and not moment.passed(0, 1795600800000)
    lsn = parse_until("0/100")
    assert lsn is not None and lsn.passed(0x100, 0) and not lsn.passed(0xFF, 0)
    with pytest.raises(ConfigError, match="expected an LSN"):
        parse_until("yesterday")


def test_errors_before_anything_connects() -> None:
    assert "no topics given" in error_line(cdc(*COMMAND, "--dsn", "dbname=x"))
    assert "no target database given" in error_line(cdc(*COMMAND, "--topics", "p.s.t"))
    until = error_line(cdc(*COMMAND, "--topics", "p.s.t", "--dsn", "dbname=x", "--until", "soon"))
    assert "until = 'soon': expected an LSN" in until
    # a target that cannot be reached: one line, no password
    refused = cdc(
        *COMMAND, "--topics", "p.s.t", env={"CDC_SINK_DSN": "host=127.0.0.1 port=1 password=sekrit-pw"}
    )
    line = error_line(refused)
    assert "cannot connect to postgres" in line and "sekrit-pw" not in refused.stderr


def test_readme_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- sink settings table:")
    start = readme.index("\n", start) + 1
    end = readme.index("<!-- end of sink settings table -->")
    assert readme[start:end].strip() == config.markdown_table(SINK_OPTIONS, "sink").strip(), (
        "README.md's sink settings table is stale: replace it with the output of `.venv/bin/python -c "
        "'import cdc.config as c, cdc.sink.settings as s; print(c.markdown_table(s.SINK_OPTIONS, \"sink\"))'`"
    )
