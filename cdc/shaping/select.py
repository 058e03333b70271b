"""Which tables, columns and rows are captured: the settings' patterns and per-table rules, pure.

``--tables`` takes names and patterns (``*`` and ``?`` within the schema or the
table name: ``public.*``, ``sales.order_*``), ``--exclude-tables`` takes away
from them; a name without a schema is in ``public``. `Selection` answers
"is this table captured?" for any ``schema.table``; the catalog side
(`cdc.shaping.catalog`) asks it of the tables Postgres has.

``--columns``, ``--exclude-columns``, ``--mask-columns`` and ``--row-filter`` are
keyed by table, or by a pattern: `Rules.for_table` gathers what applies to
one table. An exact name beats a pattern; two patterns giving one table
``--columns`` (or a row filter) are refused, as the result would depend on
the order; exclusions and masks add up (an exclusion also takes its column
out of a ``--columns`` list).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from cdc.config import Settings
from cdc.errors import ConfigError

_WILDCARDS: Final = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class TablePattern:
    """One entry of ``--tables`` / ``--exclude-tables``: a name, or a pattern of names."""

    schema: str
    name: str

    @classmethod
    def parse(cls, text: str) -> TablePattern:
        schema, _, name = text.strip().rpartition(".")
        return cls(schema or "public", name)

    @property
    def exact(self) -> bool:
        return not (_WILDCARDS & set(self.schema + self.name))

    @property
    def text(self) -> str:
        return f"{self.schema}.{self.name}"

    def matches(self, schema: str, name: str) -> bool:
        return fnmatch.fnmatchcase(schema, self.schema) and fnmatch.fnmatchcase(name, self.name)


def condition(text: str) -> str:
    """A row filter as the publication takes it: without a leading WHERE or a trailing semicolon."""
    return re.sub(r"(?is)^\s*where\s+", "", text).strip().rstrip(";").strip()


def split(qualified: str) -> tuple[str, str]:
    """``schema.table`` -> (schema, table); a bare name is in ``public``."""
    schema, _, name = qualified.rpartition(".")
    return schema or "public", name


@dataclass(frozen=True, slots=True)
class Selection:
    """``--tables`` minus ``--exclude-tables``; no ``--tables`` means every table."""

    include: tuple[TablePattern, ...] = ()
    exclude: tuple[TablePattern, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Selection:
        return cls(
            tuple(TablePattern.parse(t) for t in settings.tables),
            tuple(TablePattern.parse(t) for t in settings.exclude_tables),
        )

    @property
    def everything(self) -> bool:
        """No --tables and no --exclude-tables: whatever the publication holds."""
        return not self.include and not self.exclude

    @property
    def exact(self) -> bool:
        """Only names: the captured set is the list itself (what cdc did before patterns)."""
        return bool(self.include) and not self.exclude and all(p.exact for p in self.include)

    @property
    def names(self) -> list[str]:
        """The exact names of ``--tables`` (as ``schema.table``), in their order."""
        return [p.text for p in self.include if p.exact]

    def matches(self, qualified: str) -> bool:
        schema, name = split(qualified)
        if self.include and not any(p.matches(schema, name) for p in self.include):
            return False
        return not any(p.matches(schema, name) for p in self.exclude)

    def pick(self, tables: Iterable[str]) -> list[str]:
        """The tables of ``tables`` this selection captures, sorted."""
        return sorted({t for t in tables if self.matches(t)})

    def describe(self) -> str:
        """For log lines: what --tables and --exclude-tables say."""
        text = ", ".join(p.text for p in self.include) or "every table"
        if self.exclude:
            text += " except " + ", ".join(p.text for p in self.exclude)
        return text


@dataclass(frozen=True, slots=True)
class TableRules:
    """What the settings ask of one table's columns and rows."""

    columns: tuple[str, ...] | None = None  # --columns: publish only these
    excluded: tuple[str, ...] = ()  # --exclude-columns: publish all but these
    masked: tuple[str, ...] = ()  # --mask-columns
    row_filter: str | None = None  # --row-filter, without WHERE
    #: the columns named for this table exactly (not by a pattern): each must exist
    required: tuple[str, ...] = ()

    @property
    def shapes_publication(self) -> bool:
        """Does the publication hold this table with a column list or a row filter?"""
        return self.columns is not None or bool(self.excluded) or self.row_filter is not None


@dataclass(frozen=True, slots=True)
class Rules:
    """The per-table settings, keyed by name or pattern."""

    columns: Mapping[str, list[str]]
    excluded: Mapping[str, list[str]]
    masked: Mapping[str, list[str]]
    row_filters: Mapping[str, str]

    @classmethod
    def from_settings(cls, settings: Settings) -> Rules:
        filters = {table: condition(text) for table, text in settings.row_filters.items()}
        return cls(settings.columns, settings.exclude_columns, settings.mask_columns, filters)

    @property
    def shapes_publication(self) -> bool:
        """Column lists or row filters: the publication must list its tables (FOR TABLE)."""
        return bool(self.columns or self.excluded or self.row_filters)

    @property
    def masks(self) -> bool:
        return bool(self.masked)

    def keys(self) -> set[str]:
        return {*self.columns, *self.excluded, *self.masked, *self.row_filters}

    def for_table(self, qualified: str) -> TableRules:
        """Everything that applies to ``qualified`` (``schema.table``); `ConfigError` on a conflict."""
        schema, name = split(qualified)
        required: list[str] = []

        def matching(mapping: Mapping[str, object]) -> list[tuple[str, bool]]:
            found = []
            for key in mapping:
                pattern = TablePattern.parse(key)
                if pattern.matches(schema, name):
                    found.append((key, pattern.exact))
            return found

        def one(mapping: Mapping[str, object], label: str) -> str | None:
            keys = matching(mapping)
            exact = [k for k, is_exact in keys if is_exact]
            if exact:
                return exact[0]
            if len(keys) > 1:
                raise ConfigError(
                    f"{label} {keys[0][0]!r} and {keys[1][0]!r} both apply to {qualified}: "
                    f"give {qualified} its own {label}"
                )
            return keys[0][0] if keys else None

        def union(mapping: Mapping[str, list[str]]) -> tuple[str, ...]:
            names: list[str] = []
            for key, is_exact in matching(mapping):
                names += [c for c in mapping[key] if c not in names]
                if is_exact:
                    required.extend(mapping[key])
            return tuple(names)

        columns_key = one(self.columns, "--columns")
        columns = None
        if columns_key is not None:
            columns = tuple(self.columns[columns_key])
            if TablePattern.parse(columns_key).exact:
                required.extend(columns)
        filter_key = one(self.row_filters, "--row-filter")
        excluded = union(self.excluded)
        if columns is not None and excluded:  # a pattern's exclusion applies to the list too
            columns = tuple(c for c in columns if c not in excluded)
            excluded = ()
        return TableRules(
            columns=columns,
            excluded=excluded,
            masked=union(self.masked),
            row_filter=None if filter_key is None else self.row_filters[filter_key],
            required=tuple(dict.fromkeys(required)),
        )

    def unmatched(self, captured: Iterable[str]) -> list[str]:
        """Exact table names of the rules that are not captured (a typo, or a table left out)."""
        names = set(captured)
        return sorted(
            key
            for key in self.keys()
            if TablePattern.parse(key).exact and TablePattern.parse(key).text not in names
        )
