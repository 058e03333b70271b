"""`TypeCatalog`: enums, domains, arrays of them and extension types, resolved from the server's
catalog once per OID (the only part of `cdc.pgtypes` that queries Postgres)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cdc.errors import SourceError, SourceUnavailable
from cdc.pgtypes.columns import (
    _MAX_DEPTH,
    ColumnType,
    _array_type,
    _builtin_type,
    _same,
    _string_type,
    _text,
    _warn_once,
)

if TYPE_CHECKING:
    import psycopg


# -- non-built-in types ------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class TypeInfo:
    """One pg_type row, as far as the converters need it."""

    oid: int
    namespace: str
    name: str
    typtype: str  # b base, c composite, d domain, e enum, p pseudo, r range, m multirange
    category: str  # typcategory: A for arrays
    base_oid: int  # domains: the type they constrain
    typmod: int  # domains: their type modifier (-1 if none)
    element_oid: int  # arrays: the element type
    delimiter: str
    labels: tuple[str, ...] = ()  # enums: the labels in their order

    @property
    def qualified_name(self) -> str:
        return self.name if self.namespace in ("pg_catalog", "public") else f"{self.namespace}.{self.name}"


#: One query for a list of OIDs and, recursively, the base types of domains and
#: the element types of arrays they lead to.
TYPE_QUERY: Final = """
WITH RECURSIVE wanted(oid, depth) AS (
    SELECT unnest(%s::oid[]), 0
  UNION
    SELECT next.oid, w.depth + 1
      FROM wanted w
      JOIN pg_type t ON t.oid = w.oid
     CROSS JOIN LATERAL (VALUES (t.typbasetype), (CASE WHEN t.typcategory = 'A' THEN t.typelem END)) next(oid)
     WHERE next.oid IS NOT NULL AND next.oid <> 0 AND w.depth < 16
)
SELECT DISTINCT t.oid::int8, n.nspname, t.typname, t.typtype::text, t.typcategory::text,
       t.typbasetype::int8, t.typtypmod, t.typelem::int8, t.typdelim::text,
       ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE t.oid IN (SELECT oid FROM wanted)
"""

Lookup = Callable[[list[int]], Iterable[Sequence[Any]]]


def catalog_lookup(conn: psycopg.Connection[Any]) -> Lookup:
    """A `TypeCatalog` lookup running `TYPE_QUERY` on a normal psycopg connection."""
    import psycopg  # noqa: PLC0415 - keeps the converters importable without a driver

    def lookup(oids: list[int]) -> list[tuple[Any, ...]]:
        try:
            return conn.execute(TYPE_QUERY, (oids,)).fetchall()
        except psycopg.OperationalError as exc:
            raise SourceUnavailable(f"reading pg_type failed: {str(exc).strip()}") from exc
        except psycopg.Error as exc:
            raise SourceError(
                f"reading pg_type failed: {str(exc).strip()}; the role needs to read pg_catalog"
            ) from exc

    return lookup


class TypeCatalog:
    """Non-built-in types (enums, domains, extension types), resolved once per OID.

    ``lookup`` runs `TYPE_QUERY` for a list of OIDs (on a normal connection);
    it is None in pure contexts, where every unknown type falls back to its
    text output. The catalog is read when a type is first needed, so a type
    dropped in the meantime falls back to text (with a warning).
    """

    def __init__(self, lookup: Lookup | None = None) -> None:
        self.lookup = lookup
        self.types: dict[int, TypeInfo] = {}
        self.missing: set[int] = set()
        self._column_types: dict[tuple[int, int], ColumnType] = {}

    @classmethod
    def from_connection(cls, conn: psycopg.Connection[Any]) -> TypeCatalog:
        return cls(catalog_lookup(conn))

    def prefetch(self, oids: Iterable[int]) -> None:
        """Resolve every non-built-in OID of ``oids`` with one query (a relation's columns)."""
        wanted = sorted(
            {
                o
                for o in oids
                if o not in self.types and o not in self.missing and _builtin_type(o, -1) is None
            }
        )
        if not wanted or self.lookup is None:
            return
        for row in self.lookup(wanted):
            info = TypeInfo(
                int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]),
                int(row[5]), int(row[6]), int(row[7]), str(row[8]),
                tuple(row[9] or ()) if len(row) > 9 else (),
            )  # fmt: skip
            self.types[info.oid] = info
        self.missing.update(o for o in wanted if o not in self.types)

    def forget(self, oid: int) -> None:
        """Drop what is known of ``oid`` (a Type message says it may have changed)."""
        self.types.pop(oid, None)
        self.missing.discard(oid)
        for key in [k for k in self._column_types if k[0] == oid]:
            del self._column_types[key]

    def info(self, oid: int) -> TypeInfo | None:
        if oid not in self.types and oid not in self.missing:
            self.prefetch([oid])
        return self.types.get(oid)

    def column_type(self, oid: int, typmod: int = -1) -> ColumnType:
        """`column_type` for a non-built-in ``oid``, cached per (oid, typmod)."""
        key = (oid, typmod)
        cached = self._column_types.get(key)
        if cached is None:
            cached = self._resolve(oid, typmod, 0)
            self._column_types[key] = cached
        return cached

    def _resolve(self, oid: int, typmod: int, depth: int) -> ColumnType:
        builtin = _builtin_type(oid, typmod)
        if builtin is not None:
            return builtin
        info = self.info(oid) if depth < _MAX_DEPTH else None
        if info is None:
            _warn_once(oid)
            return _string_type(oid, typmod, f"oid {oid}")
        name = info.qualified_name
        if info.typtype == "d":
            # a domain's own typmod (numeric(10,2) domain) applies when the column has none
            base = self._resolve(info.base_oid, typmod if typmod != -1 else info.typmod, depth + 1)
            return ColumnType(
                oid, typmod, name, base.parse, base.avro, base.render, base.kind, base.element,
                base.delimiter, base.labels,
            )  # fmt: skip
        if info.typtype == "e":
            return ColumnType(oid, typmod, name, _text, "string", _same, "enum", labels=info.labels)
        if info.category == "A" and info.element_oid:
            element = self._resolve(info.element_oid, typmod, depth + 1)
            return _array_type(oid, typmod, element.name + "[]", element)
        if info.name == "citext":
            return _string_type(oid, typmod, name, "text")
        # ranges, composites, extension base types (hstore, ltree, vector, ...): their text
        return _string_type(oid, typmod, name, delimiter=info.delimiter.encode())
