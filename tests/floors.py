"""Print pip constraints pinning each runtime dependency (and the ``fast`` extra) to its floor.

    python -m tests.floors > constraints.txt

``name[extra]>=X`` in ``pyproject.toml`` becomes ``name==X``, so that
``pip install -c constraints.txt -e '.[fast]'`` installs the lowest versions
the project claims to support; ``make test-floors`` then runs the tests on them.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_FLOOR = re.compile(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)")


def floor_constraints(pyproject: Path = PYPROJECT) -> list[str]:
    """``name==floor`` for every dependency of the project and its ``fast`` extra.

    Raises `ValueError` for a dependency without a ``>=`` floor: it could not be checked.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    constraints = []
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["fast"]]:
        match = _FLOOR.match(requirement)
        if match is None:
            raise ValueError(f"{requirement!r} has no >= floor to test")
        constraints.append(f"{match[1]}=={match[2]}")
    return constraints


if __name__ == "__main__":
    sys.stdout.write("".join(f"{line}\n" for line in floor_constraints()))
