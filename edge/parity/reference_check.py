"""Whether a reference checkpoint can be compared with, before anything loads it: its directory is a
whole Hugging Face checkpoint, and it (with the adapter) is what the artifacts were built from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.errors import UserError


def check_reference_dir(path: str | Path) -> None:
    """A local checkpoint directory whose safetensors files are whole (header and data within the file)."""
    import json
    import struct

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--reference {path}: no such directory; pass the Hugging Face checkpoint directory the "
                        "artifacts were built from (config.json, *.safetensors)")
    if not (path / "config.json").is_file():
        raise UserError(f"--reference {path}: no config.json; pass a Hugging Face checkpoint directory")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"--reference {path}: no *.safetensors weights in it")
    for f in files:
        size = f.stat().st_size
        with f.open("rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            try:
                header = json.loads(fh.read(n).decode("utf-8")) if 0 <= n <= size - 8 else None
            except (UnicodeDecodeError, ValueError, RecursionError):
                header = None
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"
                and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)] if isinstance(header, dict) \
            else None
        if ends is None or 8 + n + max(ends, default=0) > size:
            raise UserError(f"--reference {f}: the safetensors file is truncated or corrupt; download or "
                            "export the checkpoint again")


def reference_identity(manifest, reference: str | Path, adapter: str | Path | None = None) -> dict[str, Any]:
    """Whether `reference` (+ `adapter`) is what the artifacts were built from, by the sha256 of its files
    (recorded by build; for a slice, an export of the same slice from the same source also counts)."""
    built = manifest.extra.get("adapter") if isinstance(manifest.extra.get("adapter"), dict) else None
    if built is None and adapter is not None:
        return {"matches": False, "detail": "the artifacts were built without an adapter; drop --adapter"}
    if built is not None:
        from edge.fileio import sha256_file

        if adapter is None:
            return {"matches": False, "detail": f"the artifacts were built with the adapter {built.get('path')}; "
                                                "pass it with --adapter"}
        got = {n: sha256_file(Path(adapter) / n) if (Path(adapter) / n).is_file() else None for n in built["files"]}
        if got != built["files"]:
            return {"matches": False, "detail": f"--adapter {adapter} is not the adapter the artifacts were built "
                                                f"with ({built.get('path')})"}
    return _checkpoint_identity(manifest, reference)


def _checkpoint_identity(manifest, reference: str | Path) -> dict[str, Any]:
    import json

    from edge.fileio import checkpoint_digests

    reference = Path(reference)
    source = manifest.extra.get("source") if isinstance(manifest.extra.get("source"), dict) else {}
    recorded = source.get("files")
    if not isinstance(recorded, dict) or not recorded:
        return {"matches": None, "detail": "the manifest records no checkpoint hashes (built by an older "
                                           "version): the reference could not be checked"}
    built_from = source.get("checkpoint", "?")
    if manifest.slice:
        record = reference / "matformer_slice.json"
        try:
            exported = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
        except (OSError, UnicodeDecodeError, ValueError):
            exported = {}
        if isinstance(exported, dict) and exported.get("source_files") == recorded \
                and exported.get("spec") == manifest.slice.get("spec"):
            return {"matches": True, "detail": f"the same slice exported from the checkpoint built from ({built_from})"}
        return {"matches": False, "detail": f"the artifacts are slice {manifest.slice.get('name')!r} of {built_from}; "
                                            "the reference must be that slice exported with `gemma3n-edge slice "
                                            "--export-hf` from the same checkpoint"}
    got = checkpoint_digests(reference)
    if got == recorded:
        return {"matches": True, "detail": f"sha256 of {', '.join(sorted(recorded))} equal to the build's"}
    differ = sorted(n for n in set(recorded) | set(got) if recorded.get(n) != got.get(n))
    return {"matches": False, "detail": f"the reference is not the checkpoint these artifacts were built from "
                                        f"({built_from}): {', '.join(differ)} differ; pass that checkpoint"}
