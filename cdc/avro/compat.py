"""Backward compatibility of a new writer schema with the one before (Avro schema resolution).

A consumer holding the old schema as its reader must be able to read records
of the new one; logical types count where they change the meaning of the
bytes (decimal scale, date vs int).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from cdc.avro.registry import RegisteredSchema
from cdc.avro.schemas import _MEANINGFUL_LOGICAL, _NAMED, NamedTypes, kind_of, logical_type

_PROMOTIONS: Final = {
    ("int", "long"),
    ("int", "float"),
    ("int", "double"),
    ("long", "float"),
    ("long", "double"),
    ("float", "double"),
    ("string", "bytes"),
    ("bytes", "string"),
}


@dataclass(slots=True, frozen=True)
class Incompatibility:
    """Why data written with the old schema cannot be read with the new one, and where."""

    path: tuple[str, ...]  # field names (the Postgres column names where known)
    reason: str

    def __str__(self) -> str:
        return f"{'.'.join(self.path) or '<root>'}: {self.reason}"


@dataclass(slots=True)
class Registration:
    """A schema a serializer registered: its compatibility with the subject's previous version."""

    schema: RegisteredSchema
    previous_version: int | None
    problems: list[Incompatibility] = field(default_factory=list)

    @property
    def compatible(self) -> bool:
        return not self.problems


def _describe(schema: Any) -> str:
    kind = kind_of(schema)
    if kind == "union":
        return " | ".join(_describe(b) for b in schema)
    logical = logical_type(schema)
    if logical == "decimal":
        return f"{kind} decimal({schema.get('precision')},{schema.get('scale', 0)})"
    if logical:
        return f"{kind} {logical}"
    if kind in _NAMED:
        return f"{kind} {schema['name']}"
    if kind == "array":
        return f"array<{_describe(schema['items'])}>"
    if kind == "map":
        return f"map<{_describe(schema['values'])}>"
    return kind


class _Checker:
    def __init__(self, reader: Any, writer: Any) -> None:
        self.r = NamedTypes(reader)
        self.w = NamedTypes(writer)
        self.active: set[tuple[int, int]] = set()

    def check(
        self, reader: Any, rns: str, writer: Any, wns: str, path: tuple[str, ...]
    ) -> list[Incompatibility]:
        reader, rns = self.r.resolve(reader, rns)
        writer, wns = self.w.resolve(writer, wns)
        wkind, rkind = kind_of(writer), kind_of(reader)
        if wkind == "union":
            return [p for branch in writer for p in self.check(reader, rns, branch, wns, path)]
        if rkind == "union":
            attempts = [self.check(branch, rns, writer, wns, path) for branch in reader]
            if any(not a for a in attempts):
                return []
            same_kind = [
                a
                for branch, a in zip(reader, attempts, strict=True)
                if kind_of(self.r.resolve(branch, rns)[0]) == wkind
            ]
            if len(same_kind) == 1:
                return same_kind[0]
            # a null branch does not matter to a non-null value: leave it out of the message
            wanted = [b for b in reader if b != "null"] if writer != "null" else reader
            target = _describe(wanted[0] if len(wanted) == 1 else wanted)
            return [Incompatibility(path, f"{_describe(writer)} cannot be read as {target}")]
        return self._check_one(reader, rns, writer, wns, path, rkind, wkind)

    def _check_one(
        self, reader: Any, rns: str, writer: Any, wns: str, path: tuple[str, ...], rkind: str, wkind: str
    ) -> list[Incompatibility]:
        if rkind != wkind and (wkind, rkind) not in _PROMOTIONS:
            return [Incompatibility(path, f"{_describe(writer)} cannot be read as {_describe(reader)}")]
        if rkind in _NAMED:
            rname, wname = reader["name"].rpartition(".")[2], writer["name"].rpartition(".")[2]
            aliases = {a.rpartition(".")[2] for a in reader.get("aliases", ())}
            if rname != wname and wname not in aliases:
                return [Incompatibility(path, f"{rkind} {wname} is renamed to {rname} without an alias")]
        if rkind == "record":
            pair = (id(reader), id(writer))
            if pair in self.active:  # a recursive type: already being checked higher up
                return []
            self.active.add(pair)
            try:
                return self._record(reader, rns, writer, wns, path)
            finally:
                self.active.discard(pair)
        if rkind == "enum":
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            if missing and "default" not in reader:
                return [
                    Incompatibility(
                        path, f"enum symbols {', '.join(missing)} are gone and there is no default"
                    )
                ]
            return []
        if rkind == "fixed" and reader["size"] != writer["size"]:
            return [Incompatibility(path, f"fixed size changes from {writer['size']} to {reader['size']}")]
        if rkind == "array":
            return self.check(reader["items"], rns, writer["items"], wns, path)
        if rkind == "map":
            return self.check(reader["values"], rns, writer["values"], wns, path)
        return self._logical_meaning(reader, writer, path)

    def _record(
        self, reader: dict[str, Any], rns: str, writer: dict[str, Any], wns: str, path: tuple[str, ...]
    ) -> list[Incompatibility]:
        written = {f["name"]: f for f in writer["fields"]}
        problems: list[Incompatibility] = []
        for rfield in reader["fields"]:
            where = (*path, rfield.get("pg.name", rfield["name"]))
            wfield = written.get(rfield["name"])
            if wfield is None:
                wfield = next((written[a] for a in rfield.get("aliases", ()) if a in written), None)
            if wfield is not None:
                problems += self.check(rfield["type"], rns, wfield["type"], wns, where)
            elif "default" not in rfield:
                problems.append(Incompatibility(where, "is new and has no default, old data lacks it"))
        return problems

    @staticmethod
    def _logical_meaning(reader: Any, writer: Any, path: tuple[str, ...]) -> list[Incompatibility]:
        """Stricter than plain resolution: a changed meaning of the same bytes is a break too."""
        rlog, wlog = logical_type(reader), logical_type(writer)
        if rlog == "decimal" and wlog == "decimal":
            if reader.get("scale", 0) != writer.get("scale", 0):
                return [
                    Incompatibility(
                        path, f"decimal scale changes: {_describe(writer)} -> {_describe(reader)}"
                    )
                ]
            if reader.get("precision", 0) < writer.get("precision", 0):
                return [
                    Incompatibility(
                        path, f"decimal precision shrinks: {_describe(writer)} -> {_describe(reader)}"
                    )
                ]
            return []
        rmeaning = rlog if rlog in _MEANINGFUL_LOGICAL else None
        wmeaning = wlog if wlog in _MEANINGFUL_LOGICAL else None
        if rmeaning != wmeaning:
            return [Incompatibility(path, f"{_describe(writer)} would be read as {_describe(reader)}")]
        return []


def check_backward(reader: Any, writer: Any) -> list[Incompatibility]:
    """What stops a reader with schema ``reader`` from reading data written with ``writer``.

    The Avro specification's schema resolution (promotions, unions, defaults
    for new fields, names and aliases, enum symbols, fixed sizes), plus one
    stricter rule: the same bytes under a different logical type (another
    decimal scale, a date read as a plain int, ...) count as incompatible.
    An empty list means backward compatible.
    """
    checker = _Checker(reader, writer)
    problems = checker.check(reader, "", writer, "", ())
    unique: dict[str, Incompatibility] = {}
    for problem in problems:
        unique.setdefault(str(problem), problem)
    return list(unique.values())


def column_problems(problems: list[Incompatibility], kind: str) -> list[Incompatibility]:
    """For a value schema, ``before.x`` and ``after.x`` are one column: report it once, as ``x``."""
    if kind != "value":
        return problems
    unique: dict[str, Incompatibility] = {}
    for p in problems:
        path = p.path[1:] if p.path[:1] in (("before",), ("after",)) else p.path
        unique.setdefault(str(Incompatibility(path, p.reason)), Incompatibility(path, p.reason))
    return list(unique.values())
