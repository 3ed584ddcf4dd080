"""The lowered-graph cache: weight-free graphs kept across builds, keyed by what defines them.

Lowering is the slow step of a build (torch.export + MLIR conversion, seconds to minutes) and
its result does not depend on the weights (they are graph inputs, see `export.py`), so one
graph serves every build of the same shapes: another recipe, another fine-tune, a rebuild.

Key: the component name, its config and signature shapes (`parts`), the toolchain versions,
and the source of the code that defines the graph: the component's module and every
`converters` module it imports, transitively. An edit elsewhere keeps the cache.

Safety: a graph is published only after it was written completely, beside a `.sha256` of its
bytes; an entry whose digest is missing or does not match (truncated, corrupted, an older
interrupted write) is deleted and lowered again, never used.

Where: `graphs/` in the tool's cache (`edge.fileio.cache_root`: `$GEMMA3N_EDGE_CACHE`, default
`~/.cache/gemma3n-edge`); the test suite points it into the checkout's `build/`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from functools import cache
from importlib import metadata
from pathlib import Path

from edge.fileio import cache_root, sha256_file

# Packages whose version can change a lowered graph.
TOOLCHAIN = ("torch", "litert-torch", "litert-converter", "ai-edge-litert", "timm", "transformers")
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # converters/


def cache_dir() -> Path:
    return cache_root() / "graphs"


@cache
def toolchain_versions() -> tuple[tuple[str, str], ...]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    return tuple((name, version(name)) for name in TOOLCHAIN)


def _module_file(name: str) -> Path | None:
    """converters.a.b -> converters/a/b.py or converters/a/b/__init__.py (None outside the package)."""
    parts = name.split(".")
    if parts[0] != _PACKAGE_ROOT.name:
        return None
    base = _PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def source_closure(roots: Iterable[str]) -> list[Path]:
    """The files of the `roots` modules and of every `converters` module they import (at any
    depth, including imports inside functions), sorted."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or name in seen:
            continue
        seen[name] = path
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                todo.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # `from pkg import module` follows the module only: a package's __init__ re-exports
                # everything and would pull the whole package in.
                subs = [f"{node.module}.{a.name}" for a in node.names]
                todo.extend(m for m in subs if _module_file(m))
                if not all(_module_file(m) for m in subs):
                    todo.append(node.module)
    return sorted(set(seen.values()))


def graph_key(component: str, parts, code: Iterable[str], extra: Iterable[bytes] = ()) -> str:
    """A 24-hex-digit key for the graph of `component`: `parts` (json-able: config, shapes),
    the toolchain, the source files of the `code` modules' closure, and `extra` bytes
    (constants baked into the graph)."""
    h = hashlib.sha256(json.dumps([component, parts, toolchain_versions()], sort_keys=True, default=str).encode())
    for path in source_closure(code):
        h.update(path.relative_to(_PACKAGE_ROOT).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    for blob in extra:
        h.update(blob)
    return h.hexdigest()[:24]


def _intact(path: Path, digest_file: Path) -> bool:
    try:
        return digest_file.read_text().strip() == sha256_file(path)
    except OSError:
        return False


def cached_graph(directory: str | os.PathLike, name: str, key: str, make: Callable[[Path], None]) -> Path:
    """The graph `<name>-<key>.tflite` in `directory`, made by `make(tmp_path)` when absent or
    not intact. `make` writes a complete file at the path it is given."""
    directory = Path(directory)
    path = directory / f"{name}-{key}.tflite"
    digest_file = path.with_name(path.name + ".sha256")
    if path.is_file() and _intact(path, digest_file):
        return path
    path.unlink(missing_ok=True)
    digest_file.unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        make(tmp)
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    tmp_digest = digest_file.with_name(f".{digest_file.name}.{os.getpid()}.tmp")
    tmp_digest.write_text(digest + "\n")
    os.replace(tmp_digest, digest_file)  # published last: a graph without it is never trusted
    return path
