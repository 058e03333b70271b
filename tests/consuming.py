"""Running `cdc consume` in tests: in process through typer's CliRunner, or as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from cdc.cli import app

CDC = str(Path(sys.executable).parent / "cdc")


def consume(args: list[str], *, expect_exit: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """(JSON lines of stdout, lines of stderr) of ``cdc consume ARGS`` run in this process."""
    result = CliRunner().invoke(app, ["consume", *args])
    assert result.exit_code == expect_exit, f"exit {result.exit_code}: {result.output} {result.exception!r}"
    return [json.loads(line) for line in result.stdout.splitlines()], result.stderr.splitlines()


def consume_subprocess(args: list[str], timeout: float = 60) -> tuple[list[dict[str, Any]], list[str]]:
    """The same through the installed ``cdc`` script in a child process."""
    done = subprocess.run(
        [CDC, "consume", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr.splitlines()


def values(lines: list[dict[str, Any]], topic: str) -> list[Any]:
    return [line["value"] for line in lines if line["topic"] == topic]
