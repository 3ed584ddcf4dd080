"""The code's shape rules (issue 20), checked by reading the sources, never importing them:

- nothing under `edge/` imports `converters` or `torch`, lazily or not (edge is the torch-free side);
- no import cycle between the project's modules (lazy imports included);
- no function over 60 lines, no file over 500 lines under `edge/` and `converters/`.

    python tools/check_code_shape.py        # prints every violation; exit 1 if any
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "converters")
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 500
FORBIDDEN = {"edge": ("converters", "torch")}  # package -> top-level names it may not import


@dataclass(frozen=True)
class Module:
    name: str  # dotted
    path: Path
    rel: str  # the path from the project root
    tree: ast.Module
    lines: int


def modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Module]:
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            text = path.read_text(encoding="utf-8")
            out[name] = Module(name, path, path.relative_to(root).as_posix(), ast.parse(text, str(path)), len(text.splitlines()))
    return out


def imports(mod: Module, known: set[str]) -> set[str]:
    """Every module `mod` imports anywhere in its body (function-level imports included): dotted
    names, resolved to project modules where they are one (`from a import b` -> a.b if a module)."""
    is_package = mod.path.name == "__init__.py"
    out = set()
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = mod.name.split(".") if is_package else mod.name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    return out


def _project_edges(mods: dict[str, Module]) -> dict[str, set[str]]:
    known = set(mods)
    edges = {}
    for name, mod in mods.items():
        targets = set()
        for imp in imports(mod, known):
            # `import a.b.c` also runs a and a.b; count the deepest project module named
            while imp and imp not in known:
                imp = imp.rpartition(".")[0]
            if imp and imp != name and not name.startswith(imp + "."):  # a package's own __init__ is not a cycle
                targets.add(imp)
        edges[name] = targets
    return edges


def cycles(mods: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module in the project's import graph."""
    edges = _project_edges(mods)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def forbidden_imports(mods: dict[str, Module]) -> list[str]:
    known = set(mods)
    out = []
    for name, mod in mods.items():
        banned = FORBIDDEN.get(name.split(".")[0], ())
        for imp in sorted(imports(mod, known)):
            if imp.split(".")[0] in banned:
                out.append(f"{mod.rel}: imports {imp}")
    return out


def long_functions(mods: dict[str, Module], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for mod in mods.values():
        for node in ast.walk(mod.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                n = node.end_lineno - start + 1
                if n > limit:
                    out.append(f"{mod.name}.{node.name} ({mod.path.name}:{node.lineno}): {n} lines > {limit}")
    return sorted(out)


def long_files(mods: dict[str, Module], limit: int = MAX_FILE_LINES) -> list[str]:
    return sorted(f"{m.rel}: {m.lines} lines > {limit}" for m in mods.values() if m.lines > limit)


def violations(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """{rule: subject -> what}: the subject (a module, function or file) identifies a violation
    whatever its line numbers; the value says how far off it is."""
    mods = modules(root, packages)
    out = {}
    for v in forbidden_imports(mods):
        out[f"forbidden: {v}"] = v
    for c in cycles(mods):
        out[f"cycle: {' <-> '.join(c)}"] = "import cycle"
    for v in long_functions(mods):
        out[f"long function: {v.split(' ')[0]}"] = v
    for v in long_files(mods):
        out[f"long file: {v.split(':')[0]}"] = v
    return out


def main() -> int:
    found = violations()
    print("\n".join(f"{k}  [{v}]" for k, v in found.items()) or "code shape: no violation")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
