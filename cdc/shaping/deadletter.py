"""Dead letters: what goes to ``<prefix>.dead-letter`` instead of a record that cannot be written.

A dead letter is a record of its own, produced with the checkpoint token of
the event it stands for: the event's transaction is confirmed only once
Kafka holds the dead letter, as it would hold the record. Its headers say
what happened (all UTF-8 text):

=============  ===============================================================
``table``      ``schema.table`` of the event ("" for a logical message)
``key``        the event's key as JSON ("null" without one)
``position``   ``commit_lsn:total_order`` in hex/decimal (reads share their position)
``error``      the exception or Kafka's refusal, one line
``stage``      ``transform`` (a transform raised), ``encode`` (the value did not
               fit its schema), ``kafka`` (Kafka refuses it: too large)
``topic``      where the record was going
``size``       the full size of the value in bytes
``truncated``  ``true`` when the value was cut to fit the dead-letter topic
``transform``  the transform that raised (stage ``transform`` only)
=============  ===============================================================

The value: the event as the connector would have written it without the
transforms (stage ``transform``; masked columns stay masked), the envelope
as JSON when it cannot be encoded (``encode``), or the refused record's own
value cut to what the dead-letter topic takes (``kafka``).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

#: Bytes a record costs in a batch besides its key, value and headers (batch header, varints),
#: rounded up: a record is refused when this plus its payload exceeds the topic's max.message.bytes.
RECORD_OVERHEAD: Final = 160
#: Kafka's default max.message.bytes (message.max.bytes of the broker), when a topic's cannot be read.
DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_588


def topic(prefix: str) -> str:
    return f"{prefix}.dead-letter"


def headers(
    *,
    table: str,
    key: Any,
    position: str,
    error: str,
    stage: str,
    topic: str,
    size: int,
    truncated: bool = False,
    transform: str = "",
) -> list[tuple[str, bytes]]:
    found = [
        ("table", table.encode()),
        ("key", orjson.dumps(key, default=str)),
        ("position", position.encode()),
        ("error", " ".join(error.split())[:2000].encode()),
        ("stage", stage.encode()),
        ("topic", topic.encode()),
        ("size", str(size).encode()),
        ("truncated", b"true" if truncated else b"false"),
    ]
    if transform:
        found.append(("transform", transform.encode()))
    return found


def headers_size(found: list[tuple[str, bytes]] | None) -> int:
    return sum(len(k) + len(v) + 8 for k, v in found or ())


def cut(value: bytes | None, key: bytes | None, found: list[tuple[str, bytes]], limit: int) -> bytes | None:
    """``value`` shortened so that the whole record fits ``limit`` (a topic's max.message.bytes)."""
    if value is None:
        return None
    room = limit - RECORD_OVERHEAD - len(key or b"") - headers_size(found)
    return value[: max(0, room)]


def set_header(found: list[tuple[str, bytes]], name: str, value: str) -> None:
    for i, (existing, _) in enumerate(found):
        if existing == name:
            found[i] = (name, value.encode())
            return
    found.append((name, value.encode()))
