"""Atomic file writes and streamed hashing: how every artifact file is written and checked.

A reader must never see a half-written file: `atomic_write` writes to a temporary file in
the destination's directory (same filesystem, so the final `os.replace` is atomic), fsyncs
it, renames it over the destination and fsyncs the directory. `sha256_file` streams, so a
multi-GB weight file costs one buffer of memory, not its size.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from edge.errors import UserError
from typing import BinaryIO, Callable, Union

Writer = Callable[[BinaryIO], None]
Payload = Union[bytes, bytearray, memoryview, str, Writer]

_CHUNK = 4 << 20  # 4 MiB: large enough to amortise syscalls, small enough to not matter


def atomic_write(path: str | os.PathLike, data: Payload, *, mode: int = 0o644) -> Path:
    """Write `data` to `path` atomically and return the path.

    `data` is bytes, a str (written as UTF-8) or a callback `f(fileobj)` that streams
    into the open binary file (for outputs too big to hold in memory).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            elif isinstance(data, str):
                f.write(data.encode("utf-8"))
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (not every platform lets a directory be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike, *, chunk_size: int = _CHUNK) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_size)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


CACHE_ENV = "GEMMA3N_EDGE_CACHE"


def cache_root() -> Path:
    """The tool's cache (lowered graphs, the Android toolchain and APK): `$GEMMA3N_EDGE_CACHE`,
    else `$XDG_CACHE_HOME/gemma3n-edge`, else `~/.cache/gemma3n-edge`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gemma3n-edge"


def read_json_if_exists(path: str | os.PathLike) -> dict | None:
    """A JSON settings file (e.g. a checkpoint's preprocessor_config.json), or None when absent."""
    import json

    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}): restore it from the checkpoint") from e


# Where transformers 5 keeps a processor's settings: the flat preprocessor_config.json (both
# extractors' keys in one dict, as the released checkpoints ship it), or nested under these keys
# of processor_config.json (what `Gemma3nProcessor.save_pretrained` writes today).
PROCESSOR_KEYS = ("feature_extractor", "image_processor")


def read_processor_settings(ckpt_dir: str | os.PathLike) -> dict | None:
    """The checkpoint's image/audio preprocessing settings as one flat dict, or None when it has none."""
    ckpt = Path(ckpt_dir)
    flat = read_json_if_exists(ckpt / "preprocessor_config.json")
    if flat is not None:
        return flat
    nested = read_json_if_exists(ckpt / "processor_config.json") or {}
    found = [nested[k] for k in PROCESSOR_KEYS if isinstance(nested.get(k), dict)]
    if not found:
        return None
    merged: dict = {}
    for part in found:
        merged.update(part)
    return merged


def checkpoint_digests(directory: str | os.PathLike) -> dict[str, str]:
    """sha256 of the files that define a checkpoint's weights (config.json, *.safetensors and the
    shard index): recorded by `build` so `parity` can tell whether a reference is that checkpoint."""
    directory = Path(directory)
    names = ["config.json", *sorted(p.name for p in directory.glob("*.safetensors")),
             *sorted(p.name for p in directory.glob("*.safetensors.index.json"))]
    return {n: sha256_file(directory / n) for n in names if (directory / n).is_file()}


def check_output_file(path: str | os.PathLike | None, flag: str) -> None:
    """Refuse, before any work, an output file path that cannot be written (so a finished result is not lost)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name, e.g. {flag} {path / 'report'}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, so the report cannot be written there")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {path}: {parent} is not writable; choose another place")
