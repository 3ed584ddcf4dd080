"""One .tflite loaded through LiteRT's CompiledModel, with its tensor buffers kept per signature.

CompiledModel (not the classic Interpreter) is the loader that resolves weights kept
outside the flatbuffer (Tensor.external_buffer -> a file beside the model), which is how
the big tables of Gemma 3n ship. Buffers are created by the runtime for each signature's
tensors (host-memory buffers carry no shape and are refused), created once and reused
across calls.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge.errors import UserError
from edge.runtime.native_log import native_stderr, warm_up_tensor_buffers
from edge.format.tflite_verify import verify_structure


# XNNPACK flags as LiteRT-LM's CPU backend sets them (measured, docs/ENGINE.md "Kernels"). Its
# vision/audio executors pass `TfLiteXNNPackDelegateOptionsDefault().flags | DYNAMIC_FULLY_CONNECTED`,
# which in its build is 8: no QS8/QU8, so their dynamic-range int8 ops run in LiteRT's builtin
# hybrid kernels; the text executor keeps XNNPACK's quantized path, as ai_edge_litert's default
# (-1) does. Any other choice makes quantized bundles part from the engine's answers.
TEXT_XNNPACK_FLAGS = -1
TOWER_XNNPACK_FLAGS = 8  # TFLITE_XNNPACK_DELEGATE_FLAG_DYNAMIC_FULLY_CONNECTED


def weight_cache_file(path: Path, xnnpack_flags: int) -> Path:
    """Where XNNPACK keeps `path`'s packed weights: our cache, one file per model file version
    (path, size, mtime, flags and CPU kind in the name); older versions of the same path are removed.

    Without it XNNPACK packs every weight into private memory once per signature's subgraph: an
    E2B int4 decoder (1.24 GB on disk) took 4.0 GB of RSS; with it 1.9 GB on the first load and
    1.7 GB (0.44 GB anonymous) on later ones, which map the packed file (measured, 1 thread)."""
    import hashlib
    import platform

    from edge.fileio import cache_root

    st = path.stat()
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    version = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:{xnnpack_flags}:{platform.machine()}".encode()).hexdigest()[:16]
    directory = cache_root() / "xnnpack"
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob(f"{where}-*.xnnpack_cache"):
        if not old.name.startswith(f"{where}-{version}"):
            old.unlink(missing_ok=True)
    return directory / f"{where}-{version}.xnnpack_cache"


class CompiledModelFile:
    """A loaded model file: signature metadata, cached buffers, run by name."""

    def __init__(self, path: str | os.PathLike, *, num_threads: int = 0, xnnpack_flags: int = TEXT_XNNPACK_FLAGS,
                 weight_cache: bool = True):
        from ai_edge_litert.compiled_model import CompiledModel, CpuOptions, HardwareAccelerator, Options

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: model file not found")
        verify_structure(self.path)  # a corrupted flatbuffer crashes the native loader: refuse it here
        threads = num_threads if num_threads > 0 else (os.cpu_count() or 1)
        cache = str(weight_cache_file(self.path, xnnpack_flags)) if weight_cache else ""
        options = Options(hardware_accelerators=HardwareAccelerator.CPU,
                          cpu_options=CpuOptions(num_threads=threads, xnnpack_flags=xnnpack_flags,
                                                 xnnpack_weight_cache_path=cache))
        warm_up_tensor_buffers()
        error = None
        with native_stderr() as log:
            try:
                self._model = CompiledModel.from_file(str(self.path), options=options)
                self.signatures = self._model.get_signature_list()
            except RuntimeError as e:  # LiteRT reports load failures (bad file, missing weights) this way
                error = e
        if error is not None:
            detail = log.tail()
            raise UserError(
                f"{self.path}: LiteRT could not load the model: {error}"
                + (f"\nruntime log:\n{detail}" if detail else "")
                + "\n(a missing external weight file beside the model, or a file from a newer converter, cause this)"
            )
        self._inputs: dict[str, dict] = {}
        self._outputs: dict[str, dict] = {}
        self._in_buffers: dict[tuple[str, str], object] = {}
        self._out_buffers: dict[tuple[str, str], object] = {}

    def input_details(self, signature: str) -> dict[str, dict]:
        """name -> {'shape': [...], 'dtype': 'float32', ...} of a signature's inputs."""
        if signature not in self._inputs:
            self._inputs[signature] = self._model.get_input_tensor_details(signature)
        return self._inputs[signature]

    def output_details(self, signature: str) -> dict[str, dict]:
        if signature not in self._outputs:
            self._outputs[signature] = self._model.get_output_tensor_details(signature)
        return self._outputs[signature]

    def input_buffer(self, signature: str, name: str):
        key = (signature, name)
        if key not in self._in_buffers:
            self._in_buffers[key] = self._model.create_input_buffer_by_name(signature, name)
        return self._in_buffers[key]

    def output_buffer(self, signature: str, name: str):
        key = (signature, name)
        if key not in self._out_buffers:
            self._out_buffers[key] = self._model.create_output_buffer_by_name(signature, name)
        return self._out_buffers[key]

    def new_input_buffer(self, signature: str, name: str):
        """A fresh (uncached) buffer shaped like a signature input: for state kept by the caller."""
        return self._model.create_input_buffer_by_name(signature, name)

    def write(self, signature: str, name: str, array: np.ndarray) -> None:
        d = self.input_details(signature)[name]
        want_shape, want_dtype = tuple(d["shape"]), np.dtype(d["dtype"])
        if array.shape != want_shape:
            raise ValueError(f"{self.path.name}:{signature}: input '{name}' needs shape {want_shape}, got {array.shape}")
        self.input_buffer(signature, name).write(np.ascontiguousarray(array, dtype=want_dtype))

    def read_output(self, signature: str, name: str) -> np.ndarray:
        d = self.output_details(signature)[name]
        shape = tuple(d["shape"])
        return self.output_buffer(signature, name).read(int(np.prod(shape)), np.dtype(d["dtype"])).reshape(shape)

    def run(self, signature: str, inputs: dict, outputs: dict) -> None:
        """Run with explicit buffers (name -> TensorBuffer)."""
        try:
            self._model.run_by_name(signature, inputs, outputs)
        except RuntimeError as e:
            raise UserError(f"{self.path.name}: running signature '{signature}' failed: {e}") from None

    def run_arrays(self, signature: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Write numpy inputs, run, read every output back as numpy."""
        for name, a in arrays.items():
            self.write(signature, name, a)
        ins = {n: self.input_buffer(signature, n) for n in arrays}
        outs = {n: self.output_buffer(signature, n) for n in self.output_details(signature)}
        self.run(signature, ins, outs)
        return {n: self.read_output(signature, n) for n in outs}

    def close(self) -> None:
        self._in_buffers.clear()
        self._out_buffers.clear()
        if getattr(self, "_model", None) is not None:
            self._model.close()
            self._model = None
