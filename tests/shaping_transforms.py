"""Transforms the shaping tests name with ``--transform tests.shaping_transforms:...``.

They run in the connector (a thread of the test process) and in its snapshot
worker processes, as a user's own package would.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cdc.shaping import Event, Record, output_columns


def nothing(event: Event) -> Event:
    """The no-op transform: what the bench measures as the cost of the machinery alone."""
    return event


def drop_cancelled(event: Event) -> Event | None:
    """A filter: cancelled orders never reach Kafka (their deletes neither)."""
    row = event.after if event.after is not None else event.before
    if row is not None and row.get("status") == "cancelled":
        return None
    return event


def route_by_region(event: Event) -> Event:
    """Route by a column value: ``<topic>.<region>``."""
    row = event.after if event.after is not None else event.before
    if row is not None:
        event.topic = f"{event.topic}.{row['region']}"
        event.headers["region"] = str(row["region"])
    return event


def explode_on_boom(event: Event) -> Event:
    """Raises on rows whose note is 'boom'."""
    row = event.after if event.after is not None else event.before
    if row is not None and row.get("note") == "boom":
        raise ValueError("cannot handle boom")
    return event


SALT = b"a salt of the transform, 32 bytes"


def mask_email(event: Event) -> Event:
    """A masking transform (the bench's second figure): email becomes a keyed hash of it."""
    for row in (event.before, event.after):
        if row is not None and row.get("email") is not None:
            row["email"] = hmac.new(SALT, str(row["email"]).encode(), hashlib.sha256).hexdigest()
    return event


@output_columns(add={"full_name": "text", "name_length": "int4"}, drop=["password"])
def enrich(event: Event) -> Event:
    """Adds two columns, drops one: the Avro schema follows the declaration."""
    for row in (event.before, event.after):
        if row is not None:
            row.pop("password", None)
            row["full_name"] = f"{row['first']} {row['last']}"
            row["name_length"] = len(row["full_name"])
    return event


def rekey_by_customer(event: Event) -> Event:
    """Key by another column: all of a customer's orders in one partition."""
    row = event.after if event.after is not None else event.before
    if row is not None and event.op != "t":
        event.key = {"customer_id": row["customer_id"]}
    return event


def outbox(event: Event) -> Record | None:
    """The outbox pattern on a table: the payload column is the value, routed by aggregate type."""
    if event.op != "c" or event.after is None:
        return None
    row = event.after
    return Record(
        topic=f"{os.environ.get('OUTBOX_PREFIX', 'outbox')}.{row['aggregate_type']}",
        key=str(row["aggregate_id"]),
        value=row["payload"],
        headers={"id": str(row["id"]), "type": row["event_type"]},
    )


def wrong_type(event: Event) -> Event:
    """Puts text into an integer column: the value does not fit its schema (a record error)."""
    if event.after is not None and event.after.get("note") == "bad":
        event.after["qty"] = "many"
    return event


def split_audit(event: Event) -> list[Event]:
    """Several events: the change, and a copy on an audit topic."""
    return [event, event.copy(topic=f"{event.topic}.audit")]
