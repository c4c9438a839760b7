"""The package layering of `agent/` (docs/architecture.md): read from the code's own
imports, so adding an import that breaks it fails here, naming the import.

    leaves (ports, paths, files, ...) <- cluster model, metadata <- clients, processes
      <- pipeline, node operations, model store, console, serving <- daemon <- commands <- cli
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from agent import PROJECT_ROOT
from agent.ports import FIXED_PORTS

AGENT = PROJECT_ROOT / "agent"
# Generated wire code (TF Serving's protos): a leaf every layer may use.
WIRE = "agent.serving.protos"

NODE_OPS = ("agent.nodeops",)
PIPELINE = ("agent.pipeline",)
DAEMON = ("agent.daemon",)
ENGINES = NODE_OPS + PIPELINE + DAEMON + ("agent.commands", "agent.cli", "agent.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an import statement in `module` names."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    package = base if (AGENT / Path(*base[1:]) / "__init__.py").exists() else base[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path) -> dict[str, int]:
    """Every agent module `path` imports (at any depth: lazy imports count), with its line."""
    module = module_name(path)
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            # `from agent.x import y` may name the module agent.x.y
            names = [f"{target}.{a.name}" if _is_module(f"{target}.{a.name}") else target for a in node.names]
        else:
            continue
        for name in names:
            if name == "agent" or name.startswith("agent."):
                out.setdefault(name, node.lineno)
    return out


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (AGENT / rel).with_suffix(".py").exists() or (AGENT / rel / "__init__.py").exists()


def graph() -> dict[str, dict[str, int]]:
    """agent module -> {imported agent module: line}, generated protos left out."""
    return {module_name(p): imports_of(p) for p in sorted(AGENT.rglob("*.py"))
            if not module_name(p).startswith(WIRE)}


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(g: dict[str, dict[str, int]], importer: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{m} (line {line}) imports {dep}" for m, deps in g.items() if within(m, importer)
            for dep, line in deps.items() if within(dep, forbidden)]


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """Import cycles among agent modules. A package's face (its __init__) naming its own
    modules (a re-export, or `open_source` picking a source) is not a dependency of the
    package on them: those edges are left out."""
    edges = {m: {d for d in deps if d in g and d != m and not d.startswith(m + ".")} for m, deps in g.items()}
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def test_no_import_cycle_in_agent():
    assert cycles(graph()) == []


@pytest.mark.parametrize("layer", ["agent.console", "agent.serving"])
def test_console_and_serving_import_nothing_from_node_operations_pipeline_or_daemon(layer):
    assert violations(graph(), (layer,), ENGINES) == []


def test_clients_import_no_engine_of_the_agent():
    forbidden = ENGINES + ("agent.console", "agent.modelstore", "agent.processes", "agent.metadata")
    assert violations(graph(), ("agent.clients",), forbidden) == []


def test_processes_and_pipeline_stay_below_node_operations_and_the_daemon():
    g = graph()
    assert violations(g, ("agent.processes",), ENGINES + ("agent.modelstore", "agent.console")) == []
    assert violations(g, PIPELINE, NODE_OPS + DAEMON + ("agent.commands", "agent.console")) == []


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The rules above are not vacuous: a console module importing node operations,
    lazily inside a function, is found."""
    g = graph()
    g["agent.console.pages"] = {**g["agent.console.pages"], "agent.nodeops.health": 99}
    assert violations(g, ("agent.console",), ENGINES) == ["agent.console.pages (line 99) imports agent.nodeops.health"]
    g["agent.ports"] = {"agent.daemon": 1}
    assert cycles(g)


def test_fixed_ports_have_one_home_that_the_schema_repeats():
    schema = json.loads((PROJECT_ROOT / "config_schema.json").read_text())
    assert {int(p): what for p, what in schema["reserved_ports"].items()} == FIXED_PORTS
    # Each public port's description names every port it may not take.
    for spec in schema["parameters"]:
        if spec["key"] in ("http.port", "grpc.port"):
            assert all(str(p) in spec["description"] for p in FIXED_PORTS), spec["description"]
