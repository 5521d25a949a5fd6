"""The import structure: continual → specopt and rl → specopt, never back, never continual ↔ rl, and no two
modules of continual/ or rl/ that import each other, directly or around a circle (lazy imports inside functions
count)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("specopt", "continual", "rl")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every module of the three packages → the modules of the three packages it imports anywhere in its file."""
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                found |= {m for m in [base] + [f"{base}.{a.name}" for a in node.names] if m in files}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in files}
        graph[name] = found - {name}
    return graph


def test_imports_run_one_way_between_the_packages():
    allowed = {"specopt": {"specopt"}, "continual": {"continual", "specopt"}, "rl": {"rl", "specopt"}}
    wrong = [(a, b) for a, deps in imports().items() for b in deps if b.split(".")[0] not in allowed[a.split(".")[0]]]
    assert wrong == []


def test_no_module_of_continual_or_rl_is_on_an_import_circle():
    graph = imports()
    # a package's __init__ re-exports its modules: those edges are not a module importing back
    edges = {a: {b for b in deps if not (b.startswith(a + ".") or a.startswith(b + "."))} for a, deps in graph.items()}
    circles = []
    for start in (m for m in edges if m.split(".")[0] in ("continual", "rl")):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in edges[node]:
                if nxt == start:
                    circles.append(" → ".join(path + [start]))
                elif nxt not in seen and nxt.split(".")[0] == start.split(".")[0]:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert circles == []
