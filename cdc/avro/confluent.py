"""Confluent's wire format, and registering writer schemas in a Schema Registry.

A record in Confluent's wire format is ``0x00``, the 4-byte big-endian id the
registry gave its writer schema, then the Avro body, the same body as in
single-object encoding: only the 10-byte header becomes this 5-byte one.
Subjects follow the TopicNameStrategy, ``<topic>-key`` and ``<topic>-value``,
so Kafka Connect sinks, ksqlDB, Flink's ``avro-confluent`` and confluent-kafka's
``AvroDeserializer`` find them.

`RegistryFraming` registers a writer schema the first time a serializer needs
it (one HTTP round trip per table version; the header is kept with the table
version's encoders, so the per-row path does not change). A new version of a
subject is first tested against the registry's compatibility rule: a refusal
is a `SchemaError` naming the columns (the registry would refuse to register
it, and records need an id); a schema the rule lets through but that breaks
backward compatibility is logged with its columns, as the schema topic's
check does.

This module is pure: the registry is reached through a `SchemaIds` client
(`cdc.schema_registry.RegistryClient`, HTTP through confluent-kafka).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final, Protocol

from cdc.avro.compat import Incompatibility, Registration, check_backward, column_problems
from cdc.avro.registry import RegisteredSchema
from cdc.avro.schemas import canonical_form, fingerprint, schema_json
from cdc.errors import SchemaError

log = logging.getLogger(__name__)

MAGIC_BYTE: Final = b"\x00"
HEADER_SIZE: Final = 5  # magic byte + schema id


def header(schema_id: int) -> bytes:
    """The 5 bytes before the Avro body of a record written with schema ``schema_id``."""
    return MAGIC_BYTE + schema_id.to_bytes(4, "big")


def split(data: bytes) -> tuple[int, memoryview]:
    """(schema id, body) of a record in Confluent's wire format; SchemaError if it is not one."""
    if len(data) < HEADER_SIZE or data[:1] != MAGIC_BYTE:
        raise SchemaError(
            f"not Confluent's wire format (starts {bytes(data[:4]).hex() or 'empty'}, expected 00): "
            "is this topic written with a Schema Registry?"
        )
    return int.from_bytes(data[1:HEADER_SIZE], "big"), memoryview(data)[HEADER_SIZE:]


class SchemaIds(Protocol):
    """What cdc asks a Schema Registry (Confluent's API). Raises `SchemaError` when it refuses,
    `cdc.errors.RegistryUnavailable` when it cannot be reached."""

    @property
    def where(self) -> str:
        """The registry's address without credentials, for messages."""
        ...

    def register(self, subject: str, schema: str) -> tuple[int, int]:
        """Register ``schema`` (Avro JSON) under ``subject`` (or find it): (schema id, version)."""
        ...

    def latest(self, subject: str) -> tuple[int, int, str] | None:
        """(schema id, version, schema) of the subject's latest version; None for a new subject."""
        ...

    def is_compatible(self, subject: str, schema: str) -> bool:
        """The registry's verdict on ``schema`` as the next version of ``subject``."""
        ...

    def compatibility(self, subject: str | None = None) -> str:
        """The rule of ``subject`` (its own, else the global one; None: the global one): BACKWARD,
        FORWARD, FULL, NONE, ..."""
        ...

    def schema(self, schema_id: int) -> str:
        """The schema (Avro JSON) with id ``schema_id``."""
        ...

    def close(self) -> None: ...


def _problems(rule: str, new: Any, old: Any) -> list[Incompatibility]:
    """What breaks ``rule`` between ``old`` and ``new`` (backward: new reads old; forward: old reads new)."""
    forward = rule.startswith(("FORWARD", "FULL"))
    backward = rule.startswith(("BACKWARD", "FULL", "NONE")) or not forward
    problems = check_backward(new, old) if backward else []
    if forward:
        problems += check_backward(old, new)
    return problems


class RegistryFraming:
    """Writer schemas registered in a Schema Registry, once each, and the headers of their records."""

    def __init__(self, client: SchemaIds) -> None:
        self.client = client
        self.registrations: list[Registration] = []
        self._known: dict[tuple[str, str], tuple[RegisteredSchema, bytes]] = {}
        self._latest: dict[str, RegisteredSchema | None] = {}

    def register(self, topic: str, kind: str, schema: dict[str, Any]) -> tuple[RegisteredSchema, bytes]:
        """The registered ``schema`` of ``<topic>-<kind>`` and the header of its records.

        Raises `SchemaError` when the registry's compatibility rule refuses it.
        """
        subject = f"{topic}-{kind}"
        text = schema_json(schema)
        known = self._known.get((subject, text))
        if known is not None:
            return known
        previous = self._previous(subject)
        problems: list[Incompatibility] = []
        if previous is not None and previous.schema != schema:
            compatible = self.client.is_compatible(subject, text)
            rule = self.client.compatibility(subject)
            if not compatible and rule == "NONE":
                rule = self.client.compatibility()  # (Apicurio says NONE for a subject without its own rule)
            problems = column_problems(_problems(rule, schema, previous.schema), kind)
            if not compatible:
                columns = "; ".join(f"column {p}" for p in problems) or "the registry gives no column"
                raise SchemaError(
                    f"the Schema Registry at {self.client.where} refuses the new schema of {subject}: "
                    f"not {rule} compatible with version {previous.version} ({columns}); change the "
                    f"subject's compatibility (PUT /config/{subject}) or undo the table change"
                )
        schema_id, version = self.client.register(subject, text)
        canonical = canonical_form(schema)
        entry = RegisteredSchema(
            fingerprint(canonical), subject, version, topic, kind, schema, canonical, schema_id
        )
        registration = Registration(entry, None if previous is None else previous.version, problems)
        self.registrations.append(registration)
        _log(registration)
        self._latest[subject] = entry
        found = (entry, header(schema_id))
        self._known[(subject, text)] = found
        return found

    def _previous(self, subject: str) -> RegisteredSchema | None:
        if subject not in self._latest:
            latest = self.client.latest(subject)
            entry = None
            if latest is not None:
                schema_id, version, text = latest
                schema = json.loads(text)
                canonical = canonical_form(schema)
                entry = RegisteredSchema(
                    fingerprint(canonical), subject, version, "", "", schema, canonical, schema_id
                )
            self._latest[subject] = entry
        return self._latest[subject]


def _log(registration: Registration) -> None:
    entry = registration.schema
    if registration.previous_version is None or registration.previous_version == entry.version:
        log.info("schema %s v%d registered (id %d)", entry.subject, entry.version, entry.schema_id)
    elif registration.problems:
        log.warning(
            "schema %s v%d (id %d) is not backward compatible with v%d (the registry's rule lets it "
            "through; a reader with the new schema cannot read the old records): %s",
            entry.subject,
            entry.version,
            entry.schema_id,
            registration.previous_version,
            "; ".join(f"column {p}" for p in registration.problems),
        )
    else:
        log.info(
            "schema %s v%d registered (id %d), backward compatible with v%d",
            entry.subject,
            entry.version,
            entry.schema_id,
            registration.previous_version,
        )
