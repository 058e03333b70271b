"""Can the compiled build be made here? ``python -m tests.build_check`` exits 0, or 1 with one line
saying what is missing (`make compiled`, `make test-compiled`)."""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path


def missing() -> str | None:
    """What the compiled build lacks on this machine, or None."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}): install one (Debian: apt install gcc)"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        return f"no Python headers ({headers}): install them (Debian: apt install python3-dev)"
    return None


if __name__ == "__main__":
    reason = missing()
    if reason:
        print(f"the compiled build needs {reason}", file=sys.stderr)
        sys.exit(1)
