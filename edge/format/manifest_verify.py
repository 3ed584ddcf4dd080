"""An artifact directory checked against its manifest.json: every listed file's size and sha256
(cached per process, keyed by the file's identity and mtime) and every declared signature against
the .tflite itself, read without executing it. Every problem gets a message naming the file and
the fix."""

from __future__ import annotations

import os
from pathlib import Path

from edge.errors import UserError
from edge.fileio import sha256_file
from edge.format.manifest import MANIFEST_NAME, Manifest, ManifestError, read_manifest

_HASH_CACHE: dict[tuple, str] = {}


def _cached_sha256(path: Path) -> str:
    # Keyed by identity and timestamps: an in-place edit changes mtime/ctime. Timestamps are
    # coarse (a few ms on some filesystems), so a rewrite within that tick could be missed:
    # callers that rewrite files in place pass use_cache=False.
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_file(path)
    return _HASH_CACHE[key]


def check_files(manifest: Manifest, directory: str | os.PathLike, *, use_cache: bool = True) -> list[str]:
    """Problems with the files: missing, wrong size, wrong sha256 (empty list = all good)."""
    directory = Path(directory)
    root = directory.resolve()
    problems = []
    for name, entry in manifest.files.items():
        p = directory / name
        if root not in p.resolve().parents:  # a symlink (or ../ name) would have us read outside
            problems.append(f"{name}: resolves to {p.resolve()}, outside {directory}; artifact files must live "
                            "in the artifact directory (copy the file in instead of linking it)")
            continue
        if not p.is_file():
            problems.append(f"{name}: listed in {MANIFEST_NAME} but missing from {directory} (copy it back or rebuild)")
            continue
        size = p.stat().st_size
        if size != entry.bytes:
            problems.append(
                f"{name}: {size} bytes on disk, {MANIFEST_NAME} says {entry.bytes} (truncated or replaced; rebuild or re-copy it)"
            )
            continue
        digest = _cached_sha256(p) if use_cache else sha256_file(p)
        if digest != entry.sha256:
            problems.append(
                f"{name}: sha256 {digest[:16]}… does not match {MANIFEST_NAME} ({entry.sha256[:16]}…): "
                f"the file is corrupted or was modified; rebuild or re-copy it"
            )
    return problems


def check_signatures(manifest: Manifest, directory: str | os.PathLike) -> list[str]:
    """Problems with declared signatures vs. the .tflite files (read, not executed)."""
    from edge.format.tflite import read_signatures

    directory = Path(directory)
    problems = []
    for name, a in manifest.artifacts.items():
        path = directory / a.file
        if not a.file.endswith(".tflite") or not path.is_file():
            continue
        try:
            actual = read_signatures(path)
        except UserError as e:
            problems.append(str(e))
            continue
        for sig_name, spec in a.signatures.items():
            if sig_name not in actual:
                problems.append(
                    f"{a.file}: signature '{sig_name}' declared in {MANIFEST_NAME} is missing from the file "
                    f"(it has: {', '.join(sorted(actual)) or 'none'})"
                )
                continue
            got = actual[sig_name]
            for side, declared, present in (("input", spec.inputs, got.inputs), ("output", spec.outputs, got.outputs)):
                for tname, t in declared.items():
                    if tname not in present:
                        problems.append(
                            f"{a.file}: {sig_name} has no {side} '{tname}' (it has: {', '.join(sorted(present))})"
                        )
                        continue
                    p = present[tname]
                    if tuple(p.shape) != tuple(t.shape) or p.dtype != t.dtype:
                        problems.append(
                            f"{a.file}: {sig_name} {side} '{tname}' is {p.dtype}{list(p.shape)} in the file, "
                            f"{MANIFEST_NAME} declares {t.dtype}{list(t.shape)}"
                        )
                for extra in sorted(set(present) - set(declared)):
                    problems.append(f"{a.file}: {sig_name} has an undeclared {side} '{extra}'")
    return problems


def load_manifest(directory: str | os.PathLike, verify: bool = True, *, use_cache: bool = True) -> Manifest:
    """Read manifest.json and, with verify, check every file's size/sha256 and every signature.

    use_cache: reuse sha256 results computed earlier in this process for unchanged files
    (a multi-GB weight file is hashed once per process, not once per load).
    """
    manifest = read_manifest(directory)
    if verify:
        problems = check_files(manifest, directory, use_cache=use_cache)
        problems += check_signatures(manifest, directory)
        if problems:
            raise ManifestError(f"{directory} failed verification:\n  " + "\n  ".join(problems))
    return manifest
