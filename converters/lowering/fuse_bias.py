"""Fuse a bias back into FULLY_CONNECTED, a repair the splice makes to a graph lowered with weights
as inputs (converters/lowering/splice.py).

With the bias an input, `F.linear(x, w, b)` lowers to FULLY_CONNECTED without bias + ADD (+ a
RESHAPE back to the input rank); a baked conversion emits one FULLY_CONNECTED with a bias operand
and keep_num_dims. Fusing gives the same ops, with bit-identical output.
"""

from __future__ import annotations

from ai_edge_litert import schema_py_generated as schema

from converters.lowering import flatbuf


def fuse_fc_bias(model: schema.ModelT, sg: schema.SubGraphT, weight_ids: set[int]) -> int:
    """FULLY_CONNECTED(x, W) -> ADD(., b) [-> RESHAPE to x's rank]  ==>  FULLY_CONNECTED(x, W, b)."""
    outputs = {int(t) for t in sg.outputs}
    cons = flatbuf.consumers(sg)
    drop: set[int] = set()
    fused = 0
    for op in sg.operators:
        if flatbuf.op_name(model, op) != "FULLY_CONNECTED" or (len(op.inputs) > 2 and op.inputs[2] >= 0):
            continue
        opts = op.builtinOptions
        y = int(op.outputs[0])
        if opts.fusedActivationFunction != schema.ActivationFunctionType.NONE or y in outputs or len(cons.get(y, [])) != 1:
            continue
        ai, _ = cons[y][0]
        add = sg.operators[ai]
        if flatbuf.op_name(model, add) != "ADD":
            continue
        bias = int(add.inputs[1] if add.inputs[0] == y else add.inputs[0])
        n_out = int(sg.tensors[op.inputs[1]].shape[0])
        if (id(sg.tensors[bias]) not in weight_ids or [int(d) for d in sg.tensors[bias].shape] != [n_out]
                or list(sg.tensors[add.outputs[0]].shape) != list(sg.tensors[y].shape)):
            continue
        op.inputs = [op.inputs[0], op.inputs[1], bias]
        opts.fusedActivationFunction = add.builtinOptions.fusedActivationFunction
        op.outputs = [add.outputs[0]]
        drop.add(ai)
        fused += 1
        _fold_reshape(model, sg, op, cons, outputs, drop)
    sg.operators = [op for i, op in enumerate(sg.operators) if i not in drop]
    return fused


def _fold_reshape(model, sg, fc, cons, outputs, drop) -> None:
    """A RESHAPE restoring the input's leading dims after FC becomes keep_num_dims=True."""
    z = int(fc.outputs[0])
    users = cons.get(z, [])
    if fc.builtinOptions.keepNumDims or z in outputs or len(users) != 1:
        return
    ri, _ = users[0]
    reshape = sg.operators[ri]
    x_shape = [int(d) for d in sg.tensors[fc.inputs[0]].shape]
    n_out = int(sg.tensors[fc.inputs[1]].shape[0])
    if flatbuf.op_name(model, reshape) != "RESHAPE" or reshape.inputs[0] != z or len(x_shape) < 3:
        return
    if [int(d) for d in sg.tensors[reshape.outputs[0]].shape] != x_shape[:-1] + [n_out]:
        return
    fc.builtinOptions.keepNumDims = True
    fc.outputs = [reshape.outputs[0]]
    drop.add(ri)
