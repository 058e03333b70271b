"""The wheel ships the .avsc files as cdc/schemas, and an installed cdc loads them from there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from cdc import avro

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import json
from pathlib import Path
import cdc
from cdc import avro
location = Path(str(avro.schemas_dir()))
for name in avro.FIXED_SCHEMAS:
    avro.fixed_schema(name)
canonical = avro.canonical_form(avro.message_schema())
print(json.dumps({"cdc": cdc.__file__, "schemas": str(location), "canonical": canonical}))
"""


def test_wheel_ships_the_schemas_and_they_load_from_it(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("pgcdc-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.startswith("cdc/schemas/")}
        assert shipped == {f"cdc/schemas/{name}.avsc" for name in avro.FIXED_SCHEMAS}
        for name in shipped:
            assert json.loads(archive.read(name)) == json.loads(
                (ROOT / "schemas" / Path(name).name).read_text()
            )
        # a pure-Python wheel installs by unpacking; its dependencies come from this venv
        site = tmp_path / "site"
        archive.extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run(
        [sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["cdc"] == str(site / "cdc" / "__init__.py")  # the installed copy, not the checkout
    assert seen["schemas"] == str(site / "cdc" / "schemas")
    assert seen["canonical"] == avro.canonical_form(avro.message_schema())
