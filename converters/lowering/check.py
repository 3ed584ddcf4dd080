"""Run a .tflite signature through ai-edge-litert, for parity checks of spliced models.

Two runtimes: the classic `Interpreter` (XNNPACK applied by default; cannot read external
weight files) and `CompiledModel` (LiteRT's runtime, the one LiteRT-LM uses; reads external
weights relative to the model's directory). `xnnpack_consumed` tells which tensors the
XNNPACK partition took, so a test can prove a quantized FULLY_CONNECTED really runs there.
"""

from __future__ import annotations

import os

import numpy as np


def run_interpreter(path: str | os.PathLike, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner(signature)
    return {k: np.array(v) for k, v in runner(**inputs).items()}


def run_compiled(path: str | os.PathLike, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from ai_edge_litert.compiled_model import CompiledModel

    from converters.lowering.external import check_files

    check_files(path)  # the runtime's own error on a missing weight file is only on stderr
    model = CompiledModel.from_file(str(path))
    index = model.get_signature_index(signature)
    names = model.get_signature_list()[signature]
    ins, outs = model.create_input_buffers(index), model.create_output_buffers(index)
    details = model.get_input_tensor_details(signature)
    for name, buf in zip(names["inputs"], ins):
        buf.write(np.ascontiguousarray(inputs[name], dtype=details[name]["dtype"]))
    model.run_by_index(index, ins, outs)
    result = {}
    out_details = model.get_output_tensor_details(signature)
    for name, buf in zip(names["outputs"], outs):
        d = out_details[name]
        result[name] = buf.read(int(np.prod(d["shape"])), d["dtype"]).reshape(d["shape"])
    return result


def xnnpack_consumed(path: str | os.PathLike) -> tuple[set[int], list[dict]]:
    """(tensor indices read by XNNPACK delegate nodes, op details) for the first subgraph."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()  # noqa: SLF001 -- the only view of delegate partitions
    consumed = {int(t) for op in ops if op["op_name"] == "DELEGATE" for t in op["inputs"]}
    return consumed, [op for op in ops if op["op_name"] != "DELEGATE"]
