"""The package's layers, read from the source: data flows API -> store -> scheduler ->
partitions and runtime -> device backend, and no module imports its way back to itself.

Every import counts, those under ``if TYPE_CHECKING:`` and inside functions included: a lazy or
type-only import hides a cycle from the interpreter, not from the design.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the venv runs 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent

# Layers from the top down; a module may import its own layer and those below, never one above.
# Modules in none of them (gpuos.jobs, errors, text, units, mig, ...) are the ground floor.
LAYERS = (
    ("gpuos.api",),
    ("gpuos.store",),
    ("gpuos.scheduler",),
    ("gpuos.partitions", "gpuos.runtime"),
    ("gpuos.devices",),
)
ABOVE_EVERY_LAYER = ("gpuos.daemon", "gpuos.cli", "gpuos.client", "gpuos.deviceplugin")

# Cycles that predate this test and sit outside the daemon's layering (the simulator and the
# snapshot), left to their owners. The list may only shrink: a cycle fixed must leave it.
KNOWN_CYCLES = {
    frozenset({"gpuos.scheduler.sim.synthetic", "gpuos.scheduler.sim.traces"}),
}


def package_dirs(root: Path) -> dict[str, Path]:
    """Installed package name -> its folder, from pyproject's package-dir (scheduler/ is gpuos.scheduler)."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    return {name: root / folder for name, folder in config["tool"]["setuptools"]["package-dir"].items()}


def modules(root: Path) -> dict[str, Path]:
    """Every module of the installed packages, by its dotted name."""
    dirs = package_dirs(root)
    nested = {folder.resolve() for name, folder in dirs.items() if "." in name}
    out: dict[str, Path] = {}
    for package, folder in dirs.items():
        for path in folder.rglob("*.py"):
            # scheduler/ lives beside gpuos/, not in it; a folder mapped elsewhere is not gpuos/<it>.
            if package == "gpuos" and any(p.resolve() in nested for p in path.parents):
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def imported_names(source: str, module: str, is_package: bool) -> Iterator[str]:
    """Every dotted name that ``module``'s source imports, wherever the import statement is:
    ``from pkg import x`` names ``pkg.x``, a module or else an attribute of module ``pkg``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            yield from (f"{base}.{alias.name}" for alias in node.names)


def imports_of(source: str, module: str, is_package: bool, known: set[str] | dict[str, Path]) -> set[str]:
    """The ``known`` modules that ``module`` imports; a name that is no module counts as its module's."""
    targets = set()
    for name in imported_names(source, module, is_package):
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            targets.add(name)
    return targets


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports (names that are attributes resolve to their module)."""
    known = modules(root)
    return {name: imports_of(path.read_text(), name, path.name == "__init__.py", known)
            for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def path_within(graph: dict[str, set[str]], component: frozenset[str]) -> list[str]:
    """One import path around ``component``, to name in a failure: a -> b -> ... -> a."""
    start = min(component)
    seen = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return [*seen[v], start]
                if w not in seen:
                    seen[w] = [*seen[v], w]
                    nxt.append(w)
        frontier = nxt
    return sorted(component)


def _layer(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    if any(module == p or module.startswith(p + ".") for p in ABOVE_EVERY_LAYER):
        return -1
    return None


@cache
def _graph() -> dict[str, set[str]]:
    return import_graph(ROOT)


def test_no_module_imports_its_way_back_to_itself() -> None:
    graph = _graph()
    new = [c for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert not new, "import cycles:\n" + "\n".join(" -> ".join(path_within(graph, c)) for c in new)


def test_known_cycles_are_still_there_until_fixed() -> None:
    fixed = KNOWN_CYCLES - set(cycles(_graph()))
    assert not fixed, f"these cycles are gone; drop them from KNOWN_CYCLES: {sorted(map(sorted, fixed))}"


def test_the_api_never_imports_the_daemon() -> None:
    reaching = {m: sorted(t for t in targets if t == "gpuos.daemon" or t.startswith("gpuos.daemon."))
                for m, targets in _graph().items() if m == "gpuos.api" or m.startswith("gpuos.api.")}
    assert not {m: t for m, t in reaching.items() if t}


def test_only_the_entry_point_imports_the_daemon_object() -> None:
    importers = sorted(m for m, targets in _graph().items() if "gpuos.daemon.daemon" in targets)
    assert importers == ["gpuos.daemon.main"]


def test_no_layer_imports_a_layer_above_it() -> None:
    upward = []
    for module, targets in _graph().items():
        layer = _layer(module)
        if layer is None or layer < 0:
            continue
        for target in sorted(targets):
            above = _layer(target)
            if above is not None and above < layer:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the data flow:\n" + "\n".join(upward)


def test_the_check_counts_type_checking_relative_and_function_level_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from gpuos.daemon.daemon import Daemon\n"
        "from . import convert\n"
        "def later():\n    import gpuos.store\n"
    )
    known = {"gpuos.api", "gpuos.api.server", "gpuos.api.convert", "gpuos.daemon.daemon", "gpuos.store"}
    assert imports_of(source, "gpuos.api.server", False, known) == {
        "gpuos.daemon.daemon", "gpuos.api.convert", "gpuos.store"
    }


def test_the_check_finds_a_cycle_through_three_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    assert path_within(graph, frozenset({"a", "b", "c"})) == ["a", "b", "c", "a"]


def test_the_scheduler_folder_is_read_as_gpuos_scheduler() -> None:
    names = modules(ROOT)
    assert names["gpuos.scheduler.framework"] == ROOT / "scheduler" / "framework.py"
    assert not any(n.startswith("gpuos.scheduler.scheduler") for n in names)
