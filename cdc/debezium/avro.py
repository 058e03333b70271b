"""Kafka Connect schemas as Avro, the way the AvroConverter (AvroData, ``connect.meta.data``) writes them.

Each Connect type becomes its Avro type; a Connect name, version, doc,
parameters and default travel as the ``connect.name``, ``connect.version``,
``connect.doc``, ``connect.parameters`` and ``connect.default`` properties, and
the logical types of Kafka Connect map to Avro's (Decimal to ``decimal`` with
its ``connect.decimal.precision``, Date to ``date``, Time to ``time-millis``,
Timestamp to ``timestamp-millis``). A struct becomes a record named after its
Connect name (``<topic>.Value`` is record ``Value`` in namespace ``<topic>``),
defined once and referred to by name after that; an optional schema becomes a
union with ``null`` first (last when its default is not null). The tests check
these schemas against the AvroData that Apicurio ships.
"""

from __future__ import annotations

from typing import Any, Final

from cdc.avro.schemas import avro_name

_PRIMITIVE: Final = {
    "int8": "int",
    "int16": "int",
    "int32": "int",
    "int64": "long",
    "float": "float",
    "double": "double",
    "boolean": "boolean",
    "string": "string",
    "bytes": "bytes",
}
_LOGICAL: Final = {
    "org.apache.kafka.connect.data.Date": "date",
    "org.apache.kafka.connect.data.Time": "time-millis",
    "org.apache.kafka.connect.data.Timestamp": "timestamp-millis",
}
DEFAULT_DECIMAL_PRECISION: Final = 64  # AvroData's, when the Decimal has no connect.decimal.precision
DEFAULT_NAMESPACE: Final = "io.confluent.connect.avro"
DEFAULT_NAME: Final = "ConnectDefault"


class _Converter:
    """One schema's conversion: records are defined once, then named; names are written as Apache
    Avro's Schema.toString writes them (no namespace where the enclosing one is the same)."""

    def __init__(self) -> None:
        self.defined: set[str] = set()
        self.namespace = ""

    def convert(self, schema: dict[str, Any], optional: bool) -> Any:
        base = self._base(schema)
        if not optional:
            return base
        default = schema.get("default")
        return ["null", base] if default is None else [base, "null"]

    def _base(self, schema: dict[str, Any]) -> Any:
        kind = schema["type"]
        name = schema.get("name")
        if kind == "struct":
            return self._record(schema)
        props: dict[str, Any] = {}
        if kind == "array":
            props["type"] = "array"
            props["items"] = self.convert(schema["items"], schema["items"].get("optional", False))
        elif kind == "map":
            props["type"] = "map"
            props["values"] = self.convert(schema["values"], schema["values"].get("optional", False))
        else:
            props["type"] = _PRIMITIVE[kind]
            if kind in ("int8", "int16"):
                props["connect.type"] = kind
        if name == "org.apache.kafka.connect.data.Decimal":
            parameters = schema.get("parameters", {})
            props["scale"] = int(parameters.get("scale", 0))
            props["precision"] = int(parameters.get("connect.decimal.precision", DEFAULT_DECIMAL_PRECISION))
        props.update(self._meta(schema))
        if name == "org.apache.kafka.connect.data.Decimal":
            props["logicalType"] = "decimal"
        elif name in _LOGICAL:
            props["logicalType"] = _LOGICAL[name]
        return props if len(props) > 1 else props["type"]

    @staticmethod
    def _meta(schema: dict[str, Any]) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if "doc" in schema:
            meta["connect.doc"] = schema["doc"]
        if "version" in schema:
            meta["connect.version"] = schema["version"]
        if "parameters" in schema:
            meta["connect.parameters"] = schema["parameters"]
        if schema.get("default") is not None:
            meta["connect.default"] = schema["default"]
        if "name" in schema:
            meta["connect.name"] = schema["name"]
        return meta

    def _record(self, schema: dict[str, Any]) -> Any:
        full = schema.get("name") or f"{DEFAULT_NAMESPACE}.{DEFAULT_NAME}"
        full = ".".join(avro_name(part) for part in full.split("."))
        namespace, _, name = full.rpartition(".")
        if full in self.defined:
            return name if namespace == self.namespace else full
        self.defined.add(full)
        record: dict[str, Any] = {"type": "record", "name": name}
        if namespace != self.namespace:
            record["namespace"] = namespace
        enclosing, self.namespace = self.namespace, namespace
        fields = []
        for f in schema["fields"]:
            optional = bool(f.get("optional"))
            field: dict[str, Any] = {"name": avro_name(f["field"]), "type": self.convert(f, optional)}
            if optional or f.get("default") is not None:
                field["default"] = f.get("default")
            fields.append(field)
        self.namespace = enclosing
        record["fields"] = fields
        record.update(self._meta(schema))
        return record


def avro_schema(schema: dict[str, Any]) -> Any:
    """The Avro schema (JSON-able) of a key or value with Connect schema ``schema``."""
    return _Converter().convert(schema, bool(schema.get("optional")))
