"""Transforms the benchmark runs (``--transform bench.transforms:...``): the cost of the machinery.

- `nothing`: returns the event as it came, so what is measured is cdc's own work per event (the
  event's dicts built, the result checked and turned back into a row, the record written);
- `mask_name`: a masking transform in plain Python, an HMAC-SHA256 of one text column.
"""

from __future__ import annotations

import hashlib
import hmac

from cdc.shaping import Event

SALT = b"the benchmark's salt, 32 bytes.."


def nothing(event: Event) -> Event:
    return event


def mask_name(event: Event) -> Event:
    after = event.after
    if after is not None and after["name"] is not None:
        after["name"] = hmac.new(SALT, after["name"].encode(), hashlib.sha256).hexdigest()
    return event
