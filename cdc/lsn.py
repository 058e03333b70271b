"""WAL positions (LSNs): 64-bit integers that Postgres prints as ``16/B374D848``.

Their own room because every stage speaks them (the decoder, the checkpoint,
the replication connection, the snapshot state, the status file), and none of
those should import the decoder just to print a position.
"""

from __future__ import annotations

import re
from typing import Final

#: 2000-01-01 minus 1970-01-01 in microseconds: Postgres counts time from 2000.
PG_EPOCH_US: Final = 946_684_800_000_000

_LSN_TEXT = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` -> int; raises `ValueError` on anything else."""
    match = _LSN_TEXT.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an LSN: {text!r} (expected hex X/X, like 0/16B3748)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)
