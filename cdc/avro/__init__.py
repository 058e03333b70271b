"""Avro for change events: schemas per table version, the wire format, the schema topic.

One module per job: `cdc.avro.schemas` (the schemas of a table version, names,
canonical form, fingerprints, single-object framing), `cdc.avro.compat`
(backward compatibility between versions), `cdc.avro.registry` (the writer
schemas the schema topic holds), `cdc.avro.encoding` (the per-row encoders)
and `cdc.avro.serializer` (`AvroSerializer`, what the writer uses).
"""

from cdc.avro.compat import Incompatibility, check_backward
from cdc.avro.registry import (
    RegisteredSchema,
    SchemaRegistry,
    decode_schema_record,
    encode_schema_record,
    verify_fingerprint,
)
from cdc.avro.schemas import (
    FIXED_SCHEMAS,
    HEADER_SIZE,
    MAGIC,
    SIDE_SCHEMAS,
    NamedTypes,
    avro_name,
    canonical_form,
    field_names,
    fingerprint,
    fixed_schema,
    full_name,
    key_schema,
    kind_of,
    logical_type,
    message_schema,
    parse,
    parse_reader,
    read_body,
    schema_json,
    schemas_dir,
    split_single_object,
    value_schema,
)
from cdc.avro.serializer import AvroSerializer, Registration

__all__ = [
    "FIXED_SCHEMAS",
    "HEADER_SIZE",
    "MAGIC",
    "SIDE_SCHEMAS",
    "AvroSerializer",
    "Incompatibility",
    "NamedTypes",
    "RegisteredSchema",
    "Registration",
    "SchemaRegistry",
    "avro_name",
    "canonical_form",
    "check_backward",
    "decode_schema_record",
    "encode_schema_record",
    "field_names",
    "fingerprint",
    "fixed_schema",
    "full_name",
    "key_schema",
    "kind_of",
    "logical_type",
    "message_schema",
    "parse",
    "parse_reader",
    "read_body",
    "schema_json",
    "schemas_dir",
    "split_single_object",
    "value_schema",
    "verify_fingerprint",
]
