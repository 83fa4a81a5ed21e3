"""Which wing of ntng imports which (module-level and lazy imports alike), and any import against the data flow.

    python tools/import_graph.py                      # the imports between wings; exit 1 on one against the flow
    python tools/import_graph.py --summary [PACKAGE]  # the module graph: modules, arrows, cycles, longest file

The wings in the order the data flows: data -> models -> training (+ methods, its plug-ins) -> experiments -> book,
with the CLI on top and errors, files, presets and resources shared by all. A wing may import the wings before it; the
training core and the methods import each other (the loop calls the registry; a method builds on the core's
optimizers, clock and batches). Exit 1 on an import against the flow.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ntng"
ORDER = {"errors": 0, "files": 0, "presets": 0, "resources": 0, "data": 1, "models": 2, "training": 3, "methods": 3,
         "experiments": 4, "book": 5, "cli": 6, "__init__": 6}


def wing_of(module: str) -> str:
    """ntng.training.loop -> training; ntng.cli -> cli."""
    return module.split(".")[1] if module.count(".") >= 1 else "__init__"


def imports(path: Path, package: Path = PACKAGE) -> set[str]:
    """The ntng modules `path` imports, as absolute names."""
    here = module_name(path, package)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("ntng"):
                out.add(name)
                # `from ntng.data import corpus` imports the module ntng.data.corpus (a name that is no module is
                # cut back to its module by the caller)
                out |= {f"{name}.{a.name}" for a in node.names if a.name != "*"}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ntng")}
    return {n for n in out if n != "ntng"}


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package).with_suffix("").parts
    return ".".join(("ntng",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each an import cycle."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def module_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a package's import of its own __init__ aside)."""
    names = {module_name(f, package): f for f in sorted(package.rglob("*.py"))}
    graph = {}
    for name, path in names.items():
        targets = set()
        for target in imports(path, package):
            while target not in names and "." in target:  # `from ntng.x import y`, y a name in module x
                target = target.rsplit(".", 1)[0]
            if target in names and target != name and not name.startswith(target + "."):
                targets.add(target)
        graph[name] = targets
    return graph


def summary(package: Path) -> int:
    """The module graph of the package at `package` (this checkout's, or another commit's extracted with
    `git archive`): modules, import arrows between them (a package's import of its own __init__ aside), cycles,
    the longest file and the widest folder."""
    sys.setrecursionlimit(10_000)
    files = sorted(package.rglob("*.py"))
    names = {module_name(f, package): f for f in files}
    graph = module_graph(package)
    lines = {name: len(path.read_text().splitlines()) for name, path in names.items()}
    longest = max(lines, key=lines.get)
    folders = defaultdict(int)
    for path in files:
        folders[str(path.parent.relative_to(package.parent))] += 1
    widest = max(folders, key=folders.get)
    found = cycles(graph)
    print(f"modules {len(names)}, lines {sum(lines.values())}, import arrows {sum(map(len, graph.values()))}")
    print(f"longest file {names[longest].relative_to(package.parent)}: {lines[longest]} lines")
    print(f"widest folder {widest}/: {folders[widest]} modules")
    print(f"cycles {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--summary"]:
        return summary(Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else PACKAGE)
    edges: dict[tuple[str, str], int] = defaultdict(int)
    against = []
    for source_module, targets in sorted(module_graph().items()):
        source = wing_of(source_module)
        for target in sorted(targets):
            to = wing_of(target)
            if to == source:
                continue
            edges[(source, to)] += 1
            if ORDER.get(to, 0) > ORDER.get(source, 0):
                against.append(f"{source_module} imports {target}")
    for (a, b), n in sorted(edges.items(), key=lambda e: (ORDER.get(e[0][0], 9), e[0])):
        print(f"{a:12s} -> {b:12s} {n}")
    for line in against:
        print("against the flow:", line, file=sys.stderr)
    return 1 if against else 0


if __name__ == "__main__":
    sys.exit(main())
