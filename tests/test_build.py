"""The two builds of the same source: pure Python, and the hot modules compiled with mypyc.

`make test` runs the whole suite on the pure build (what ``pip install`` gives without the
compiled wheel), then `make test-compiled` compiles the hot modules in place and runs the tests
that need no server plus the chaos cases on them with ``CDC_EXPECT_BUILD=compiled``: a build that
silently stayed pure fails here instead of passing as compiled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.util import find_spec
from pathlib import Path

import cdc

ROOT = Path(__file__).parents[1]


def test_the_hot_modules_are_the_ones_the_mypyc_hook_compiles() -> None:
    hook = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
        "hooks"
    ]["mypyc"]
    files = [name.removesuffix(".py").replace("/", ".") for name in hook["include"]]
    assert sorted(files) == sorted(cdc.HOT_MODULES)
    assert hook["enable-by-default"] is False  # pip install of the source stays pure


def test_the_build_is_whole_and_the_one_expected() -> None:
    """Every hot module compiled, or none (a partial build mixes stale extensions with new
    sources); with CDC_EXPECT_BUILD, exactly that build."""
    build = cdc.build()
    assert build in ("pure", "compiled"), f"a partial build ({build}): run `make compiled` or `make pure`"
    expected = os.environ.get("CDC_EXPECT_BUILD")
    if expected:
        assert build == expected, f"CDC_EXPECT_BUILD={expected} but this checkout imports the {build} build"


def test_no_compiled_module_is_older_than_its_source() -> None:
    """An extension built before its source was edited runs the old code: `make compiled` again."""
    for name in cdc.compiled_modules():
        spec = find_spec(name)
        assert spec is not None and spec.origin is not None
        extension = Path(spec.origin)
        source = extension.parent / (name.rsplit(".", 1)[1] + ".py")
        assert extension.stat().st_mtime >= source.stat().st_mtime, f"{extension} is older than {source}"


def test_a_connector_process_imports_the_same_build() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import cdc; print(cdc.build())"], capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == cdc.build()
