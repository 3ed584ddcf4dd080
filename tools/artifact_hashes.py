"""Hash every artifact the tiny trained model builds into, once per recipe: the check that a
refactor of the exporters changed no byte (issue 20).

    python tools/artifact_hashes.py --out build/hashes/before.json
    python tools/artifact_hashes.py --out build/hashes/after.json --compare build/hashes/before.json

Each build gets a fresh graph cache, so the graphs are lowered by the code under test, not read
back from an earlier run. manifest.json is hashed without its version fields (`generator`,
`build.toolchain`), which a release may change without changing an artifact. Builds are
reproducible on one machine (tests/test_reproducible.py); across machines floating point may
differ, so compare records made on the same machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VERSION_FIELDS = ("generator",)


def manifest_digest(path: Path) -> str:
    """sha256 of manifest.json with the fields that name the tool's version removed."""
    d = json.loads(path.read_text())
    for key in VERSION_FIELDS:
        d.pop(key, None)
    for value in d.values():  # the provenance block records the toolchain's versions
        if isinstance(value, dict):
            value.pop("toolchain", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def digests(out: Path) -> dict[str, str]:
    result = {}
    for p in sorted(out.rglob("*")):
        if p.is_file():
            rel = p.relative_to(out).as_posix()
            if p.name == "manifest.json":
                result[rel] = manifest_digest(p)
            else:
                result[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return result


def compare(record: dict, before: dict) -> list[str]:
    """`label/file` of every file whose digest differs, or that only one record has, in the
    builds `record` made."""
    return [f"{label}/{name}" for label, files in record.items()
            for name in sorted(set(files) | set(before.get(label, {})))
            if files.get(name) != before.get(label, {}).get(name)]


def builds() -> list[tuple[str, str, dict]]:
    """(label, checkpoint kind, BuildOptions fields): every recipe on the trained tiny model, and
    a MatFormer slice of the E4B-shaped tiny model."""
    from converters.quant.recipes import RECIPES

    every = {"prefill": (16, 64), "context": 320, "modalities": ("text", "vision", "audio")}
    out = [(name, "trained", {"recipe": name, **every}) for name in RECIPES]
    out.append(("slice-int8", "tiny-e4b", {"recipe": "int8", "prefill": (8, 16), "context": 96,
                                           "modalities": ("text",)}))
    return out


def slice_spec(work: Path) -> str:
    """The E4B -> E2B slice in miniature (as tests/test_build_slice.py): skip a block, halve FFNs."""
    from converters.tiny import PRESETS

    p = PRESETS["tiny-e4b"]
    spec = work / "e2b_analog.json"
    spec.write_text(json.dumps({"layers_skipped": list(p.e2b_layers_skipped),
                                "ffn_hidden_dims": [p.e2b_ffn_hidden_dim] * (15 - len(p.e2b_layers_skipped))}))
    return str(spec)


def checkpoint(kind: str, work: Path) -> Path:
    import converters
    from converters.tiny import make_tiny_checkpoint

    if (work / kind).is_dir():
        return work / kind
    if kind == "trained":  # copied, so its recorded path is the same from any checkout
        return Path(shutil.copytree(Path(converters.__file__).parent / "data" / "tiny_trained", work / kind))
    return make_tiny_checkpoint(work / kind, seed=0, preset=kind)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file: {build label: {file: sha256}}")
    parser.add_argument("--compare", help="an earlier record: report every file whose bytes differ")
    parser.add_argument("--only", help="comma-separated build labels (default: all)")
    args = parser.parse_args(argv)
    os.environ.pop("SOURCE_DATE_EPOCH", None)
    from converters.build import BuildOptions, build

    record = {}
    # One fixed work directory for every checkout: manifests record the checkpoint's and the
    # slice spec's paths, so both live here.
    work = Path(tempfile.gettempdir()) / "gemma3n-edge-hashes"
    shutil.rmtree(work, ignore_errors=True)
    try:
        for label, kind, fields in builds():
            if args.only and label not in args.only.split(","):
                continue
            os.environ["GEMMA3N_EDGE_CACHE"] = str(work / f"cache-{label}")
            if kind == "tiny-e4b":
                fields = {**fields, "slice": slice_spec(work)}
            out = build(checkpoint(kind, work), work / label, BuildOptions(**fields))
            record[label] = digests(out)
            print(f"{label}: {len(record[label])} files", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    if not args.compare:
        return 0
    differ = compare(record, json.loads(Path(args.compare).read_text()))
    for line in differ:
        print(f"differs: {line}")
    print(f"{len(record)} builds, {sum(map(len, record.values()))} files, {len(differ)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
