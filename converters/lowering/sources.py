"""Where spliced weights come from, read a row chunk at a time.

`splice_weights` takes `weights` as a mapping or a callable `name -> array-like`. An array-like
has `.shape` and supports `x[a:b]` along the first dimension returning something numpy can read
(a numpy array or memmap, a CPU torch tensor in any float dtype, a safetensors slice, or
`SafetensorsSource(...)(name)` below). Only the rows being quantized are in memory, so a table
larger than RAM streams. The callable is also the hook for values the graph expects pre-folded:
return `1 + w`, a transposed or reshaped tensor, a slice, a product of two checkpoint tensors —
whatever the lowered module's parameter means — and the splice stores exactly that.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import UserError

WeightSource = Callable[[str], Any] | Mapping[str, Any]


class WeightSourceError(UserError):
    """A weight is missing from the source or has the wrong shape/dtype."""


def getter(weights: WeightSource) -> Callable[[str], Any]:
    if isinstance(weights, Mapping):
        def get(name: str) -> Any:
            try:
                return weights[name]
            except KeyError:
                raise WeightSourceError(f"the weight source has no tensor {name!r}; the graph needs it.") from None
        return get
    if callable(weights):
        return weights
    raise WeightSourceError(f"weights must be a mapping or a callable name -> array, not {type(weights).__name__}")


def to_numpy_f32(x: Any) -> np.ndarray:
    """A chunk as a float32 numpy array (torch tensors of any float dtype included, no torch import)."""
    if hasattr(x, "detach") and hasattr(x, "float"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def row_chunks(array: Any, name: str, shape: tuple[int, ...], chunk_bytes: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 [rows, prod(shape[1:])]) chunks of `array`, checked against `shape`."""
    got = tuple(int(d) for d in getattr(array, "shape", ()))
    if got != tuple(shape):
        raise WeightSourceError(
            f"weight {name!r}: the source gives shape {got}, the graph was lowered with {tuple(shape)}; "
            "return the tensor the module's parameter holds (transpose/reshape it in the weight callable)."
        )
    if len(shape) == 0:
        yield 0, to_numpy_f32(array).reshape(1, 1)
        return
    rows = shape[0]
    row_elems = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    step = max(1, chunk_bytes // max(1, 4 * row_elems))
    for start in range(0, rows, step):
        chunk = to_numpy_f32(array[start:min(rows, start + step)])
        yield start, chunk.reshape(chunk.shape[0], row_elems)


# ---------------------------------------------------------------------------------------------
# safetensors, read with pread (no mmap: touched mapped pages would count as resident memory)

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


class _Rows:
    """Lazy rows of one safetensors tensor; bf16 is widened to float32."""

    def __init__(self, path: Path, dtype: str, shape: tuple[int, ...], begin: int):
        self.path, self.stored, self.shape, self.begin = path, dtype, shape, begin
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0] if self.shape else 1)
        if step != 1:
            raise IndexError("only contiguous row ranges are supported")
        row_elems = int(np.prod(self.shape[1:], dtype=np.int64))
        np_type = np.dtype(_DTYPES[self.stored])
        count = (stop - start) * row_elems
        with open(self.path, "rb") as f:
            f.seek(self.begin + start * row_elems * np_type.itemsize)
            data = np.fromfile(f, dtype=np_type, count=count)
        if self.stored == "BF16":
            data = (data.astype(np.uint32) << 16).view(np.float32)
        return data.astype(np.float32, copy=False).reshape((stop - start, *self.shape[1:]))

    def __array__(self, dtype=None, copy=None):
        out = self[0:self.shape[0]] if self.shape else self[0:1].reshape(())
        return out if dtype is None else out.astype(dtype)


class SafetensorsSource:
    """`name -> lazy rows` over one or more .safetensors files (float tensors only)."""

    def __init__(self, *paths: str | os.PathLike):
        self._index: dict[str, _Rows] = {}
        for p in map(Path, paths):
            with open(p, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                if meta["dtype"] not in _DTYPES:
                    continue
                self._index[name] = _Rows(p, meta["dtype"], tuple(meta["shape"]), 8 + n + meta["data_offsets"][0])

    def names(self) -> list[str]:
        return sorted(self._index)

    def __call__(self, name: str) -> _Rows:
        try:
            return self._index[name]
        except KeyError:
            raise WeightSourceError(f"no float tensor {name!r} in the safetensors files") from None
