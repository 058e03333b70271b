"""The shape of the code: no import circle, no import upward, light process control.

The import graph is read from the source with `ast` (imports under
``if TYPE_CHECKING:`` do not run and do not count; imports inside functions
do). Each module belongs to a layer; it may import its own layer and the
ones below, never above, and the graph has no cycle at all.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "cdc"

#: Lowest first. A module may import from its own layer and the layers before it.
LAYERS: list[tuple[str, set[str]]] = [
    (
        "foundation",
        {"cdc", "cdc.errors", "cdc.lsn", "cdc.redact", "cdc.config", "cdc.logs", "cdc.sink.settings"},
    ),
    (
        "pure",
        {
            "cdc.pgoutput",
            "cdc.pgtypes",
            "cdc.pgtypes.*",
            "cdc.change",
            "cdc.events",
            "cdc.avro",
            "cdc.avro.*",
            "cdc.debezium",
            "cdc.debezium.*",
            "cdc.shaping",
            "cdc.shaping.select",
            "cdc.shaping.transform",
            "cdc.shaping.deadletter",
            "cdc.shaping.shaper",
            "cdc.shaping.outbox",
        },
    ),
    ("state", {"cdc.checkpoint", "cdc.status", "cdc.control", "cdc.metrics"}),
    (
        "boundaries",
        {
            "cdc.pg",
            "cdc.replication",
            "cdc.kafka",
            "cdc.kafka.*",
            "cdc.slots",
            "cdc.shaping.catalog",
            "cdc.schema_registry",
        },
    ),
    (
        "stages",
        {"cdc.writer", "cdc.exactly_once", "cdc.consume", "cdc.snapshot", "cdc.snapshot.*", "cdc.doctor"},
    ),
    ("pipeline", {"cdc.connector", "cdc.sink", "cdc.sink.*"}),
    ("front", {"cdc.cli", "cdc.__main__", "cdc.demo", "cdc.dev", "cdc.devservers", "cdc.devservers.*"}),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The cdc modules ``path`` imports (at any depth, except under TYPE_CHECKING)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names if a.name.split(".")[0] == "cdc")

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            module = node.module or ""
            if module.split(".")[0] != "cdc":
                return
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member.endswith(".*") and module.startswith(member[:-1])):
                return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)


def test_no_import_goes_up_a_layer() -> None:
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in GRAPH.items()
        for target in targets
        if target in MODULES and _layer(target) > _layer(module)
    ]
    assert upward == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or with a self-loop (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}}) == [["a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


HEAVY = ("psycopg", "kafka", "confluent_kafka", "fastavro")


@pytest.mark.parametrize("command", [["status"], ["stop", "--timeout", "1"], ["snapshot", "public.t"]])
def test_process_control_commands_load_no_database_or_kafka_client(
    tmp_path: Path, command: list[str]
) -> None:
    """`cdc status`, `stop` and `snapshot` only read the state directory: they must start fast and
    work where the pipeline's libraries are broken or absent."""
    probe = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
        "from cdc.cli import main\n"
        f"sys.argv = ['cdc', *{command!r}, '--name', 'probe', '--state-dir', {str(tmp_path)!r}]\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    loaded = [line for line in proc.stdout.splitlines() if line.startswith("LOADED")]
    assert loaded == ["LOADED []"], proc.stdout + proc.stderr
