"""The outbox event router: Debezium's EventRouter as a built-in transform.

A service writes its state and the event about it in one transaction: the
event is a row of an outbox table (``--outbox-table``), or a transactional
logical message with the prefix ``outbox`` (``--outbox-messages``: no table,
no bloat). `OutboxRouter` turns each into one Kafka record, as Debezium's
EventRouter does, so that its consumers fit:

- topic: ``--outbox-topic`` (``{prefix}.outbox.{aggregatetype}``);
- key: ``aggregateid`` as text: one aggregate's events share a partition, in
  commit order;
- value: ``payload`` as it is: jsonb and json as their JSON text, text as
  UTF-8, bytea untouched (bytes the service encoded itself, Avro in the
  Confluent framing with a schema it registered, say: cdc neither checks nor
  registers them); a NULL payload is a tombstone;
- headers: ``id`` and ``type``, ``timestamp`` when the table has that column,
  and the columns of ``--outbox-header COLUMN=HEADER``. Values are text: as
  the JSON format renders them (timestamps ISO 8601).

Column names follow Debezium's (``id``, ``aggregatetype``, ``aggregateid``,
``type``, ``payload``, optional ``timestamp``); ``--outbox-field
FIELD=COLUMN`` renames them. Only inserts are routed: updates, deletes,
truncates and snapshot reads of the outbox table are dropped (an outbox row
deleted in the transaction that inserted it still sends its event, and the
table stays empty). Every other event passes through untouched. A message's
content is a JSON object with the same fields (``id`` may be left out: the
message's position ``commit_lsn:total_order`` stands in); its ``payload`` is
written as JSON. A row or message the router cannot route (a missing
field, a topic name Kafka refuses) raises, and ``--on-transform-error``
decides (fail, skip, dead-letter).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import orjson

from cdc.shaping.transform import Event, Record

if TYPE_CHECKING:
    from cdc.change import ChangeEvent
    from cdc.config import Settings

#: The prefix of the logical messages routed like outbox rows.
MESSAGE_PREFIX: Final = "outbox"
FIELDS: Final = ("id", "aggregatetype", "aggregateid", "type", "payload", "timestamp")
_TOPIC: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")


class OutboxRouter:
    """The transform; `takes` tells the shaper which events it would change (the others skip it)."""

    __slots__ = ("field", "headers", "messages", "prefix", "table", "topic")

    def __init__(
        self,
        table: str = "",
        *,
        prefix: str = "cdc",
        topic: str = "{prefix}.outbox.{aggregatetype}",
        fields: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        messages: bool = True,
    ) -> None:
        if table and "." not in table:
            table = f"public.{table}"
        self.table = table or None  # "schema.table", as `Event.table` names it
        self.prefix = prefix
        self.topic = topic
        self.field = {f: f for f in FIELDS} | dict(fields or {})  # field -> column (or message field)
        self.headers = dict(headers or {})  # column -> header
        self.messages = messages

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboxRouter | None:
        """The router ``settings`` ask for (``--outbox-table``, ``--outbox-messages``), or None."""
        if not (settings.outbox_table or settings.outbox_messages):
            return None
        return cls(
            settings.outbox_table,
            prefix=settings.topic_prefix,
            topic=settings.outbox_topic,
            fields=settings.outbox_fields,
            headers=settings.outbox_headers,
        )

    def takes(self, change: ChangeEvent) -> bool:
        """Is ``change`` the router's: an event of the outbox table, or an outbox message?"""
        table = change.table
        if table is None:
            return self.messages and change.message_prefix == MESSAGE_PREFIX
        return self.table is not None and table.qualified_name == self.table

    def __call__(self, event: Event) -> Event | Record | None:
        if event.table is None:
            message = event.message
            if not self.messages or message is None or message.prefix != MESSAGE_PREFIX:
                return event
            return self._from_message(event, message.content)
        if event.table != self.table:
            return event
        if event.op != "c" or event.after is None:
            return None  # updates, deletes, truncates and snapshot reads of the outbox: no events
        return self._record(event, event.after, _column_render(event))

    def _from_message(self, event: Event, content: bytes) -> Record:
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"an outbox message is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError(f"an outbox message is a JSON object, not a {type(body).__name__}")
        if body.get(self.field["id"]) is None:
            body[self.field["id"]] = event.source.position
        payload = body.get(self.field["payload"])
        if payload is not None:
            body[self.field["payload"]] = orjson.dumps(payload)
        return self._record(event, body, None)

    def _record(self, event: Event, row: Mapping[str, Any], render: Mapping[str, Any] | None) -> Record:
        field = self.field
        values: dict[str, Any] = {}
        for name in ("id", "aggregatetype", "aggregateid", "type"):
            value = row.get(field[name])
            if value is None:
                what = "column" if render is not None else "field"
                raise ValueError(f"outbox {what} {field[name]} is missing or null: it is required")
            values[name] = _text(value, render, field[name])
        aggregatetype = values["aggregatetype"]
        topic = self.topic.format(prefix=self.prefix, aggregatetype=aggregatetype, type=values["type"])
        if not _TOPIC.fullmatch(topic):
            raise ValueError(f"aggregatetype {aggregatetype!r} makes {topic!r}, not a Kafka topic name")
        headers: dict[str, str | bytes] = {"id": values["id"], "type": values["type"]}
        timestamp = row.get(field["timestamp"])
        if timestamp is not None:
            headers["timestamp"] = _text(timestamp, render, field["timestamp"])
        for column, header in self.headers.items():
            value = row.get(column)
            if value is not None:
                headers[header] = value if isinstance(value, bytes) else _text(value, render, column)
        key = row[field["aggregateid"]]
        if not isinstance(key, bytes):
            key = values["aggregateid"]
        payload = row.get(field["payload"])
        if payload is not None and not isinstance(payload, bytes | str):
            payload = orjson.dumps(_rendered(payload, render, field["payload"]))
        return Record(topic, payload, key, headers)


def _column_render(event: Event) -> dict[str, Any]:
    """Column name -> its type's rendering (wire value -> JSON value) for ``event``'s table."""
    change = event._change
    table = change.table if change is not None else None
    if table is None:
        return {}
    return {column.name: column.type.render for column in table.columns}


def _rendered(value: Any, render: Mapping[str, Any] | None, column: str) -> Any:
    function = None if render is None else render.get(column)
    return value if function is None else function(value)


def _text(value: Any, render: Mapping[str, Any] | None, column: str) -> str:
    """A header or key value as text: strings as they are, others as the JSON format renders them."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    rendered = _rendered(value, render, column)
    return rendered if isinstance(rendered, str) else orjson.dumps(rendered).decode()
