"""No import circle among cimc's modules, and each spine module imports alone in a fresh interpreter.

The import graph is read from the source with `ast`: every `import cimc.X` / `from cimc.X import Y` (at module level
or inside a function: a lazy import still makes one module depend on another), with cimc.passes and cimc.targets
being the passes/ and targets/ folders (pyproject's package-dir). Imports under `if TYPE_CHECKING:` are left out:
they never run. A package's implicit __init__ run is not an edge (every module would then depend on cimc/__init__);
an explicit `import cimc` / `from cimc import X` is."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"cimc": ROOT / "cimc", "cimc.passes": ROOT / "passes", "cimc.targets": ROOT / "targets"}


def module_files() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            if name.startswith("cimc.passes.") or name.startswith("cimc.targets.") or not \
                    any(name.startswith(p + ".") for p in ("cimc.passes", "cimc.targets")):
                modules[name] = path
    return modules


def _type_checking_block(node) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or
                                         (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imported_names(module: str, path: Path, known: set[str]) -> set[str]:
    """The cimc modules `module` imports, anywhere in its source (TYPE_CHECKING blocks excepted)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = {id(n) for block in ast.walk(tree) if _type_checking_block(block) for n in ast.walk(block)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                                  # relative import
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:     # `from cimc import compiler` names a module; `from cimc import compile` not
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name in known and name != module}


def import_graph() -> nx.DiGraph:
    modules = module_files()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from((name, target) for target in imported_names(name, path, set(modules)))
    return graph


def test_the_import_graph_is_read_from_every_module():
    """An independent count: the .py files of the three folders, and edges we know exist."""
    graph = import_graph()
    files = sum(len(list(folder.rglob("*.py"))) for folder in PACKAGES.values())
    assert graph.number_of_nodes() == files
    assert graph.has_edge("cimc.manifest", "cimc.layer_table")
    assert graph.has_edge("cimc.compiler", "cimc.pipeline")
    assert graph.has_edge("cimc.backends.lut_reads", "cimc.backends._lut_kernel")   # a function-level import


def test_no_import_cycle_among_cimc_modules():
    graph = import_graph()
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles[:10])
    assert nx.is_directed_acyclic_graph(graph)


def test_the_cycle_check_finds_a_cycle_that_exists():
    """The check is not blind: a circle like the old manifest -> compiler -> ... -> manifest is reported."""
    graph = import_graph()
    graph.add_edge("cimc.layer_table", "cimc.compiler")
    cycles = list(nx.simple_cycles(graph))
    assert any({"cimc.layer_table", "cimc.compiler"} <= set(c) for c in cycles)


def test_lower_layers_do_not_import_the_compiler_or_the_commands():
    """passes/ and targets/ are below cimc/*, which is below cimc/commands (and the CLI)."""
    graph = import_graph()
    top = {n for n in graph if n.startswith("cimc.commands") or n in ("cimc.cli", "cimc")}
    for low in (n for n in graph if n.startswith(("cimc.passes", "cimc.targets"))):
        reach = nx.descendants(graph, low)
        assert not reach & top, f"{low} reaches {sorted(reach & top)}"
        assert "cimc.compiler" not in reach and "cimc.pipeline" not in reach, low
    assert not nx.descendants(graph, "cimc.manifest") & {"cimc.compiler", "cimc.pipeline", "cimc.executor"}
    assert "cimc.backends.crossbar" not in nx.descendants(graph, "cimc.graph_run")


SPINE = ["cimc.manifest", "cimc.compiler", "cimc.pipeline", "cimc.calibration_passes", "cimc.executor",
         "cimc.graph_run", "cimc.calibrate", "cimc.backends", "cimc.backends.crossbar", "cimc.backends.reference",
         "cimc.layer_table", "cimc.compile_options", "cimc.resources", "cimc.passes.replicate", "cimc.passes.pack",
         "cimc.passes.estimate", "cimc.targets.registry", "cimc.training", "cimc.commands.compile"]


@pytest.mark.parametrize("module", SPINE)
def test_each_spine_module_imports_alone(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
