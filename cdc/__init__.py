"""cdc: change data capture from PostgreSQL (pgoutput) to Kafka, with Avro."""

from importlib.util import find_spec

__version__ = "0.1.0"

#: The per-row modules the compiled build turns into C extensions with mypyc (`make compiled`,
#: pyproject.toml's mypyc hook, which lists the same files: a test keeps the two equal). Every
#: other module, and every module of the pure build, is plain Python: the same source either way.
HOT_MODULES = (
    "cdc.pgoutput",
    "cdc.pgtypes.columns",
    "cdc.pgtypes.temporal",
    "cdc.avro.encoding",
    "cdc.writer",
    "cdc.avro.serializer",
    "cdc.connector",
    "cdc.change",
)


def compiled_modules() -> list[str]:
    """The hot modules this installation imports as compiled extensions (none: the pure build)."""
    found = []
    for name in HOT_MODULES:
        spec = find_spec(name)
        if spec is not None and spec.origin is not None and not spec.origin.endswith(".py"):
            found.append(name)
    return found


def build() -> str:
    """``compiled`` (mypyc), ``pure``, or which modules are compiled when only some are."""
    found = compiled_modules()
    if not found:
        return "pure"
    return "compiled" if len(found) == len(HOT_MODULES) else f"compiled: {', '.join(found)}"
