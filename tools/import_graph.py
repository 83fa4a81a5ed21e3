"""Which wing of ntng imports which (module-level and lazy imports alike), and any import against the data flow.

    python tools/import_graph.py

The wings in the order the data flows: data -> models -> training (+ methods, its plug-ins) -> experiments -> book,
with the CLI on top and errors, presets and resources shared by all. A wing may import the wings before it; the
training core and the methods import each other (the loop calls the registry; a method builds on the core's
optimizers, clock and batches). Exit 1 on an import against the flow.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ntng"
ORDER = {"errors": 0, "presets": 0, "resources": 0, "data": 1, "models": 2, "training": 3, "methods": 3,
         "experiments": 4, "book": 5, "cli": 6, "__init__": 6}


def wing_of(module: str) -> str:
    """ntng.training.loop -> training; ntng.cli -> cli."""
    return module.split(".")[1] if module.count(".") >= 1 else "__init__"


def imports(path: Path) -> set[str]:
    """The ntng modules `path` imports, as absolute names."""
    here = "ntng." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
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
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ntng")}
    return {n for n in out if n != "ntng"}


def main() -> int:
    edges: dict[tuple[str, str], int] = defaultdict(int)
    against = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        source = rel.parts[0]
        for target in imports(path):
            to = wing_of(target)
            if to == source:
                continue
            edges[(source, to)] += 1
            if ORDER.get(to, 0) > ORDER.get(source, 0):
                against.append(f"{'/'.join(rel.parts)}.py imports {target}")
    for (a, b), n in sorted(edges.items(), key=lambda e: (ORDER.get(e[0][0], 9), e[0])):
        print(f"{a:12s} -> {b:12s} {n}")
    for line in against:
        print("against the flow:", line, file=sys.stderr)
    return 1 if against else 0


if __name__ == "__main__":
    sys.exit(main())
