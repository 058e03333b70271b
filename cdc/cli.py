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

from cdc.errors import CdcError

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


def main() -> None:
    try:
        app()
    except CdcError as exc:
        if _debug:
            raise
        print(f"cdc: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
