"""The registry of writer schemas: what the schema topic holds, by fingerprint and subject."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from fastavro import schemaless_writer

from cdc.avro.schemas import (
    HEADER_SIZE,
    MAGIC,
    canonical_form,
    fingerprint,
    fixed_schema,
    parse,
    read_body,
    schema_json,
)
from cdc.errors import SchemaError

# -- the registry of writer schemas -----------------------------------------------------------


@dataclass(slots=True, frozen=True)
class RegisteredSchema:
    """One writer schema with its place in the schema topic."""

    fingerprint: bytes
    subject: str
    version: int
    topic: str
    kind: str  # "key" or "value"
    schema: dict[str, Any]
    canonical: str
    schema_id: int | None = None  # the Schema Registry's id, when one registered it

    @property
    def json(self) -> str:
        return schema_json(self.schema)


def _without_docs(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_docs(v) for k, v in schema.items() if k != "doc"}
    if isinstance(schema, list):
        return [_without_docs(v) for v in schema]
    return schema


class SchemaRegistry:
    """Writer schemas by fingerprint and by subject, as on the schema topic."""

    def __init__(self) -> None:
        self.by_fingerprint: dict[bytes, RegisteredSchema] = {}
        self.subjects: dict[str, dict[int, RegisteredSchema]] = {}

    def __iter__(self) -> Iterator[RegisteredSchema]:
        return iter(self.by_fingerprint.values())

    def __len__(self) -> int:
        return len(self.by_fingerprint)

    def copy(self) -> SchemaRegistry:
        """Another registry holding the same (immutable) entries."""
        other = SchemaRegistry()
        other.by_fingerprint = dict(self.by_fingerprint)
        other.subjects = {subject: dict(versions) for subject, versions in self.subjects.items()}
        return other

    def get(self, fp: bytes) -> RegisteredSchema | None:
        return self.by_fingerprint.get(fp)

    def latest(self, subject: str) -> RegisteredSchema | None:
        versions = self.subjects.get(subject)
        return versions[max(versions)] if versions else None

    def next_version(self, subject: str) -> int:
        versions = self.subjects.get(subject)
        return max(versions) + 1 if versions else 1

    def add(self, entry: RegisteredSchema) -> None:
        old = self.by_fingerprint.get(entry.fingerprint)
        if old is not None:
            self.subjects.get(old.subject, {}).pop(old.version, None)
        self.by_fingerprint[entry.fingerprint] = entry
        self.subjects.setdefault(entry.subject, {})[entry.version] = entry

    def owns(self, fp: bytes, subject: str, schema: dict[str, Any]) -> bool | None:
        """None: ``fp`` is free; True: it is this subject's same schema; False: a clash."""
        old = self.by_fingerprint.get(fp)
        if old is None:
            return None
        return old.subject == subject and _without_docs(old.schema) == _without_docs(schema)

    def load(self, key: bytes | None, value: bytes | None, verify: bool = True) -> RegisteredSchema | None:
        """Add one record of the schema topic (None for a deletion marker); SchemaError if malformed.

        ``verify=False`` takes the record's fingerprint and canonical form as written instead of
        computing them (a pure-Python CRC over every schema: seconds for thousands of tables);
        `verify_fingerprint` checks one entry when it is first used.
        """
        if value is None:
            if key is not None and key in self.by_fingerprint:
                old = self.by_fingerprint.pop(key)
                self.subjects.get(old.subject, {}).pop(old.version, None)
            return None
        entry = decode_schema_record(value, verify)
        if key is not None and key != entry.fingerprint:
            raise SchemaError(
                f"schema record key {key.hex()} differs from its fingerprint {entry.fingerprint.hex()}: "
                "the schema topic holds records cdc did not write"
            )
        self.add(entry)
        return entry


@cache
def _schema_record_codec() -> tuple[Any, bytes]:
    schema = fixed_schema("schema_record")
    return parse(schema), MAGIC + fingerprint(canonical_form(schema))


def encode_schema_record(entry: RegisteredSchema) -> tuple[bytes, bytes]:
    """(key, value) of the schema topic record announcing ``entry``."""
    parsed, header = _schema_record_codec()
    buf = io.BytesIO()
    buf.write(header)
    record = {
        "fingerprint": entry.fingerprint,
        "subject": entry.subject,
        "version": entry.version,
        "topic": entry.topic,
        "kind": entry.kind,
        "schema": entry.json,
        "canonical": entry.canonical,
    }
    schemaless_writer(buf, parsed, record)
    return entry.fingerprint, buf.getvalue()


def verify_fingerprint(entry: RegisteredSchema) -> None:
    """SchemaError unless ``entry``'s schema has the fingerprint it claims."""
    canonical = canonical_form(entry.schema)
    fp = fingerprint(canonical)
    if fp != entry.fingerprint or canonical != entry.canonical:
        raise SchemaError(
            f"schema record {entry.subject} v{entry.version} claims fingerprint "
            f"{entry.fingerprint.hex()} but its schema has {fp.hex()}"
        )


def decode_schema_record(value: bytes, verify: bool = True) -> RegisteredSchema:
    """A schema topic value back into a `RegisteredSchema`, checking its fingerprint (``verify``)."""
    parsed, header = _schema_record_codec()
    if value[:HEADER_SIZE] != header:
        raise SchemaError(
            f"schema topic record does not start with the cdc.SchemaRecord header {header.hex()}: "
            "it was not written by this version of cdc"
        )
    try:
        record: dict[str, Any] = read_body(value[HEADER_SIZE:], parsed)
        schema = json.loads(record["schema"])
    except (SchemaError, ValueError) as exc:
        raise SchemaError(f"malformed schema topic record: {exc}") from None
    entry = RegisteredSchema(
        record["fingerprint"], record["subject"], record["version"], record["topic"], record["kind"], schema,
        record["canonical"],
    )  # fmt: skip
    if verify:
        verify_fingerprint(entry)
    return entry
