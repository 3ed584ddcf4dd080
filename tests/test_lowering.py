"""Graph/weights-separated lowering on a toy decoder-shaped module (two signatures).

The toy has what the Gemma 3n modules have: an embedding table (F.embedding -> EMBEDDING_LOOKUP),
an RMSNorm weight (MUL), matmuls with and without bias (FULLY_CONNECTED), a 4x4 coefficient
matrix (too small to quantize) and a non-weight buffer; prefill_8 and decode share the weights.
References: litert-torch's own baked conversion of the same module, and ai-edge-quantizer
0.10.0 run on that baked model.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
litert_torch = pytest.importorskip("litert_torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from converters.lowering import ExternalWeightsError, LoweringError, check, flatbuf, lower, splice_weights  # noqa: E402
from converters.lowering.sources import WeightSourceError  # noqa: E402
from converters.quant import RecipeError  # noqa: E402
from converters.quant import quantize as qz  # noqa: E402

V, D, FF = 96, 64, 128  # 64 and 128 are multiples of the int4 block (32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Toy(nn.Module):
    def __init__(self, tied: bool = False):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.norm = RMSNorm(D)
        self.up = nn.Linear(D, FF, bias=True)
        self.down = nn.Linear(FF, D, bias=False)
        self.coefs = nn.Linear(4, 4, bias=False)  # AltUp-like: 16 elements
        self.head = nn.Linear(D, V, bias=False)
        if tied:
            self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.tensor(0.5))  # not a weight: stays a graph constant
        with torch.no_grad():  # perturb everything, norms included (fresh init hides bugs)
            for p in self.parameters():
                p.add_(torch.randn_like(p) * 0.05)

    def forward(self, token_ids, pos):
        x = F.embedding(token_ids, self.embed.weight)  # (B, T, D)
        h = F.linear(F.gelu(F.linear(self.norm(x), self.up.weight, self.up.bias)), self.down.weight)
        x = x + h
        x = torch.cat([x[..., 4:], F.linear(x[..., :4], self.coefs.weight)], -1)
        return {"logits": F.linear(x, self.head.weight), "hidden": x * self.scale}


def _samples(t: int) -> dict:
    return {"token_ids": torch.zeros(1, t, dtype=torch.int32), "pos": torch.arange(t, dtype=torch.int32)}


SIGNATURES = {"prefill_8": 8, "decode": 1}


def _inputs(t: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"token_ids": rng.integers(0, V, (1, t)).astype(np.int32), "pos": np.arange(t, dtype=np.int32)}


def _state(module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("lowering")
    torch.manual_seed(0)
    module = Toy().eval()
    sigs = {name: _samples(t) for name, t in SIGNATURES.items()}
    info = lower(module, sigs, d / "graph.tflite")
    show = litert_torch.config.show_progress
    litert_torch.config.show_progress = False
    try:
        builder = litert_torch
        for name, sample in sigs.items():
            builder = builder.signature(name, module, sample_kwargs=sample)
        builder.convert().export(str(d / "baked.tflite"))
    finally:
        litert_torch.config.show_progress = show
    return {"dir": d, "module": module, "state": _state(module), "info": info,
            "graph": d / "graph.tflite", "baked": d / "baked.tflite"}


def _aeq(src, dst, bits: int, granularity: str):
    from ai_edge_quantizer import quantizer

    op_config = {"weight_tensor_config": {"num_bits": bits, "symmetric": True, "granularity": granularity, "dtype": "INT"},
                 "compute_precision": "INTEGER", "explicit_dequantize": False, "skip_checks": False,
                 "min_weight_elements": 1024}
    recipe = [{"regex": ".*", "operation": op, "algorithm_key": "min_max_uniform_quantize", "op_config": op_config}
              for op in ("FULLY_CONNECTED", "EMBEDDING_LOOKUP")]
    quantizer.Quantizer(str(src), recipe).quantize(enable_progress_report=False).export_model(str(dst), overwrite=True)


def _quant_key(path, model, sg, tensor):
    """Everything that defines a constant operand: type, shape, bytes, quantization (+ scales)."""
    q = tensor.quantization
    key = [int(tensor.type), [int(d) for d in tensor.shape], flatbuf.buffer_bytes(path, model, tensor)]
    if q is not None and q.scale is not None:
        key += [np.asarray(q.scale, np.float32).tobytes(), np.asarray(q.zeroPoint, np.int64).tobytes(), q.quantizedDimension]
    if q is not None and q.details is not None:
        scales = sg.tensors[q.details.scales]
        key += [q.details.blockSize, q.details.zeroPoints, int(scales.type), flatbuf.buffer_bytes(path, model, scales)]
    return key


def _ops(path):
    model = flatbuf.read_model(path)
    return model, [[flatbuf.op_name(model, op) for op in sg.operators] for sg in model.subgraphs]


def _weight_operands(path):
    """Per op (in order): the constant FULLY_CONNECTED / EMBEDDING_LOOKUP operand keys."""
    model, _ = _ops(path)
    out = []
    for sg in model.subgraphs:
        for op in sg.operators:
            name = flatbuf.op_name(model, op)
            if name in ("FULLY_CONNECTED", "EMBEDDING_LOOKUP"):
                out.append((name, _quant_key(path, model, sg, sg.tensors[op.inputs[1]])))
    return out


def _run_all(path, runner):
    return {sig: runner(path, sig, _inputs(t)) for sig, t in SIGNATURES.items()}


# ---------------------------------------------------------------------------------------------


def test_lowered_graph_has_weights_as_inputs_and_named_outputs(toy):
    info = toy["info"]
    assert [w.name for w in info.weights] == [n for n, _ in toy["module"].named_parameters()]  # order kept too
    assert info.weight("up.bias").input_name == "up_bias"
    for sig in info.signatures:
        assert {t.name for t in sig.inputs} == {"token_ids", "pos"}
        assert {t.name for t in sig.outputs} == {"logits", "hidden"}
    model = flatbuf.read_model(toy["graph"])
    for sd in model.signatureDefs:
        assert {flatbuf.s(io.name) for io in sd.inputs} == {"token_ids", "pos"} | {w.input_name for w in info.weights}
    # No weight data in the graph: the largest constant is far below the smallest weight matrix.
    tensor_buffers = {t.buffer for sg in model.subgraphs for t in sg.tensors}
    sizes = [len(b.data) for i, b in enumerate(model.buffers) if i in tensor_buffers and b.data is not None]
    assert max(sizes) < 4 * 16 * 16
    # The module got its parameters back.
    assert toy["module"].up.weight.shape == (FF, D) and "scale" in dict(toy["module"].named_buffers())


def test_fp32_splice_equals_baked_conversion(toy, tmp_path):
    out = tmp_path / "fp32.tflite"
    report = splice_weights(toy["graph"], out, toy["state"], "fp32")
    assert report.fused_biases == 2  # up.bias, once per signature
    baked_model, baked_ops = _ops(toy["baked"])
    model, ops = _ops(out)
    assert ops == baked_ops
    for sa, sb in zip(baked_model.subgraphs, model.subgraphs):  # options and shapes too (keep_num_dims...)
        for a, b in zip(sa.operators, sb.operators):
            assert (vars(a.builtinOptions) if a.builtinOptions else None) == (vars(b.builtinOptions) if b.builtinOptions else None)
            assert [list(sa.tensors[t].shape) for t in a.outputs] == [list(sb.tensors[t].shape) for t in b.outputs]
    assert _weight_operands(out) == _weight_operands(toy["baked"])
    for runner in (check.run_interpreter, check.run_compiled):
        ref, got = _run_all(toy["baked"], runner), _run_all(out, runner)
        for sig in SIGNATURES:
            assert set(got[sig]) == {"logits", "hidden"}
            for k in ref[sig]:
                np.testing.assert_array_equal(got[sig][k], ref[sig][k])  # bit-identical
    names = [flatbuf.s(t.name) for sg in model.subgraphs for t in sg.tensors]
    assert len(names) == len(set(names))
    assert "decode/up.weight" in names
    assert flatbuf.get_metadata(model, "gemma3n_edge.graph_info") is None


@pytest.mark.parametrize("recipe,bits,granularity", [("int8", 8, "CHANNELWISE"), ("int4", 4, "BLOCKWISE_32")])
def test_quantized_splice_matches_ai_edge_quantizer(toy, tmp_path, recipe, bits, granularity):
    out, ref = tmp_path / f"{recipe}.tflite", tmp_path / f"aeq_{recipe}.tflite"
    report = splice_weights(toy["graph"], out, toy["state"], recipe)
    _aeq(toy["baked"], ref, bits, granularity)
    assert _ops(out)[1] == _ops(ref)[1]
    ours, theirs = _weight_operands(out), _weight_operands(ref)
    assert [k[0] for k in ours] == [k[0] for k in theirs]
    for (op, a), (_, b) in zip(ours, theirs):
        assert a == b, op  # type, shape, payload bytes, scales, zero points, block size
    formats = {w.name: w.format for w in report.weights}
    expect = "int8" if bits == 8 else "int4-b32"
    assert formats == {"embed.weight": expect, "up.weight": expect, "down.weight": expect, "head.weight": expect,
                       "norm.weight": "fp32", "up.bias": "fp32", "coefs.weight": "fp32"}
    for runner in (check.run_interpreter, check.run_compiled):
        a, b = _run_all(out, runner), _run_all(ref, runner)
        for sig in SIGNATURES:
            for k in a[sig]:
                np.testing.assert_array_equal(a[sig][k], b[sig][k])
    # XNNPACK really runs the quantized matmuls: their weights are inputs of its delegate node.
    consumed, ops = check.xnnpack_consumed(out)
    fcs = [op for op in ops if op["op_name"] == "FULLY_CONNECTED"]
    assert len(fcs) == 4 and all(int(op["inputs"][1]) in consumed for op in fcs)


def test_quantization_error_vs_fp32_is_small(toy, tmp_path):
    fp32 = _run_all(splice_weights(toy["graph"], tmp_path / "a.tflite", toy["state"], "fp32").path, check.run_interpreter)
    for recipe, tol in (("fp16", 2e-3), ("int8", 2e-2), ("int4", 1.5e-1), ("mixed", 1.5e-1)):
        got = _run_all(splice_weights(toy["graph"], tmp_path / f"{recipe}.tflite", toy["state"], recipe,
                                      component="decoder").path, check.run_interpreter)
        logits, ref = got["prefill_8"]["logits"], fp32["prefill_8"]["logits"]
        # Relative to the logits' spread; LITERT.md measured 0.01% (fp16), 0.26% (int8), ~3% (int4-b32)
        # on a real decoder; the toy is rougher (64-wide dot products), so the bounds are looser.
        assert np.abs(logits - ref).max() / np.abs(ref).max() < tol, recipe


def test_fp16_weights_get_a_dequantize(toy, tmp_path):
    out = tmp_path / "fp16.tflite"
    splice_weights(toy["graph"], out, toy["state"], "fp16")
    model, ops = _ops(out)
    assert ops[0].count("DEQUANTIZE") == 4  # embed, up, down, head
    sg = model.subgraphs[0]
    t = next(t for t in sg.tensors if flatbuf.s(t.name) == "prefill_8/up.weight")
    assert flatbuf.type_name(t.type) == "FLOAT16"
    stored = np.frombuffer(flatbuf.buffer_bytes(out, model, t), np.float16).reshape(FF, D)
    np.testing.assert_array_equal(stored, toy["state"]["up.weight"].astype(np.float16))


def test_tiny_matrices_and_norms_stay_float(toy, tmp_path):
    out = tmp_path / "int4.tflite"
    report = splice_weights(toy["graph"], out, toy["state"], "int4").by_name()
    assert report["coefs.weight"].format == "fp32" and "fewer than 1024" in report["coefs.weight"].why
    assert report["norm.weight"].format == "fp32" and report["norm.weight"].consumers == ("MUL",)
    model = flatbuf.read_model(out)
    types = {flatbuf.s(t.name): flatbuf.type_name(t.type) for t in model.subgraphs[1].tensors}
    assert types["decode/coefs.weight"] == "FLOAT32" and types["decode/norm.weight"] == "FLOAT32"
    assert types["decode/down.weight"] == "INT4" and types["decode/down.weight_scales"] == "FLOAT16"


def test_external_weights(toy, tmp_path):
    inside = tmp_path / "inside.tflite"
    splice_weights(toy["graph"], inside, toy["state"], "int4")
    out = tmp_path / "ext" / "model.tflite"
    report = splice_weights(toy["graph"], out, toy["state"], "int4",
                            external={"embed.weight": "embedding.bin", "head.weight": "embedding.bin", "up.weight": "up.bin"})
    assert report.external == {"embedding.bin": 2 * (V * D // 2), "up.bin": FF * D // 2}  # int4: half a byte each
    assert {w.name: w.location for w in report.weights}["embed.weight"] == "embedding.bin"
    model = flatbuf.read_model(out)
    assert all(eb.offset % 64 == 0 for eb in model.externalBuffers)
    t = next(t for t in model.subgraphs[0].tensors if flatbuf.s(t.name) == "prefill_8/embed.weight")
    assert t.buffer == 0 and t.externalBuffer & 0x80000000
    assert os.path.getsize(out) < os.path.getsize(inside) - V * D  # the tables really left the model
    a, b = _run_all(inside, check.run_compiled), _run_all(out, check.run_compiled)
    for sig in SIGNATURES:
        for k in a[sig]:
            np.testing.assert_array_equal(b[sig][k], a[sig][k])
    with pytest.raises(Exception, match="lacks data"):  # the classic Interpreter cannot read them
        check.run_interpreter(out, "decode", _inputs(1))
    (tmp_path / "ext" / "up.bin").unlink()
    with pytest.raises(ExternalWeightsError, match="up.bin is missing"):
        check.run_compiled(out, "decode", _inputs(1))


def test_zero_rows_and_blocks_run_in_xnnpack(toy, tmp_path, monkeypatch):
    state = {k: v.copy() for k, v in toy["state"].items()}
    state["embed.weight"][0] = 0.0  # a pad row
    state["up.weight"][3] = 0.0  # a dead row
    state["down.weight"][5, :32] = 0.0  # one dead block
    inputs = {"token_ids": np.array([[0, 1, 2, 0, 4, 5, 6, 7]], np.int32), "pos": np.arange(8, dtype=np.int32)}
    for recipe in ("int4", "int8"):
        out = tmp_path / f"{recipe}.tflite"
        splice_weights(toy["graph"], out, state, recipe)
        a, b = check.run_interpreter(out, "prefill_8", inputs), check.run_compiled(out, "prefill_8", inputs)
        for k in a:
            assert np.isfinite(a[k]).all()
            np.testing.assert_array_equal(a[k], b[k])
    # Without the clamp the zero scale reaches XNNPACK, which refuses the model: what the clamp is for.
    monkeypatch.setattr(qz, "FP16_MIN_NORMAL", np.float32(0.0))
    with np.errstate(invalid="ignore"):
        splice_weights(toy["graph"], tmp_path / "noclamp.tflite", state, "int4")
    with pytest.raises(Exception):
        check.run_interpreter(tmp_path / "noclamp.tflite", "prefill_8", inputs)


def test_streaming_in_small_chunks_gives_the_same_file(toy, tmp_path):
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    splice_weights(toy["graph"], a, toy["state"], "mixed", component="decoder")
    seen = []
    splice_weights(toy["graph"], b, toy["state"], "mixed", component="decoder", chunk_bytes=300,
                   progress=lambda i, n, name: seen.append((i, n, name)))
    assert a.read_bytes() == b.read_bytes()
    assert [s[2] for s in seen] == [w.name for w in toy["info"].weights] and seen[-1][:2] == (6, 7)


def test_torch_tensors_and_callables_are_weight_sources(toy, tmp_path):
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in toy["state"].items()}  # like a checkpoint
    splice_weights(toy["graph"], a, {k: v.float().numpy() for k, v in bf16.items()}, "int8")
    splice_weights(toy["graph"], b, lambda name: bf16[name], "int8")  # bf16 torch tensors, widened per chunk
    assert a.read_bytes() == b.read_bytes()


def test_bad_inputs_are_clear_errors(toy, tmp_path):
    with pytest.raises(RecipeError, match="int4-b128"):
        splice_weights(toy["graph"], tmp_path / "x.tflite", toy["state"], "int3")
    wrong = dict(toy["state"], **{"up.weight": toy["state"]["up.weight"].T})
    with pytest.raises(WeightSourceError, match=r"'up.weight'.*\(64, 128\).*\(128, 64\)"):
        splice_weights(toy["graph"], tmp_path / "x.tflite", wrong, "fp32")
    missing = {k: v for k, v in toy["state"].items() if k != "down.weight"}
    with pytest.raises(WeightSourceError, match="down.weight"):
        splice_weights(toy["graph"], tmp_path / "x.tflite", missing, "fp32")
    with pytest.raises(LoweringError, match="not weights of this graph"):
        splice_weights(toy["graph"], tmp_path / "x.tflite", toy["state"], "fp32", external={"nope": "w.bin"})
    with pytest.raises(ExternalWeightsError, match="plain file name"):
        splice_weights(toy["graph"], tmp_path / "x.tflite", toy["state"], "fp32", external={"up.weight": "../w.bin"})
    with pytest.raises(LoweringError, match="not written by converters.lowering.lower"):
        splice_weights(toy["baked"], tmp_path / "x.tflite", toy["state"], "fp32")
    assert not (tmp_path / "x.tflite").exists() and not list(tmp_path.glob(".x.tflite*"))  # nothing half-written


def test_tied_weights_and_meta_device(tmp_path):
    torch.manual_seed(1)
    module = Toy(tied=True).eval()
    state = _state(module)
    with torch.device("meta"):
        meta = Toy(tied=True).eval()
    meta.scale = torch.tensor(0.5)  # buffers that stay in the graph need data; weights do not
    info = lower(meta, {"decode": _samples(1)}, tmp_path / "g.tflite")
    assert [(w.name, w.aliases) for w in info.weights if w.aliases] == [("embed.weight", ("head.weight",))]
    out = tmp_path / "m.tflite"
    report = splice_weights(tmp_path / "g.tflite", out, state, "int4")
    assert report.by_name()["embed.weight"].consumers == ("EMBEDDING_LOOKUP", "FULLY_CONNECTED")
    model = flatbuf.read_model(out)
    sg = model.subgraphs[0]
    tables = {sg.tensors[op.inputs[1]].buffer for op in sg.operators if flatbuf.op_name(model, op) in ("EMBEDDING_LOOKUP",)}
    heads = {sg.tensors[op.inputs[1]].buffer for op in sg.operators
             if flatbuf.op_name(model, op) == "FULLY_CONNECTED" and list(sg.tensors[op.inputs[1]].shape) == [V, D]}
    assert tables == heads  # one stored table serves the lookup and the lm_head
    with torch.no_grad():
        ref = module(torch.tensor([[7]], dtype=torch.int32), torch.tensor([0], dtype=torch.int32))["logits"].numpy()
    got = check.run_compiled(out, "decode", {"token_ids": np.array([[7]], np.int32), "pos": np.array([0], np.int32)})
    assert np.abs(got["logits"] - ref).max() / np.abs(ref).max() < 0.15  # int4-b32 on a 64-wide toy

    with torch.device("meta"):
        bad = Toy().eval()
    with pytest.raises(LoweringError, match="meta device"):
        lower(bad, {"decode": _samples(1)}, tmp_path / "bad.tflite")
    with pytest.raises(LoweringError, match="not float32"):
        lower(Toy().to(torch.bfloat16), {"decode": _samples(1)}, tmp_path / "bad.tflite")
    assert not (tmp_path / "bad.tflite").exists()


class PrefillWithoutLogits(Toy):
    """Like the Gemma decoder: prefill returns no logits, so it never reads the lm_head."""

    def forward(self, token_ids, pos):
        out = super().forward(token_ids, pos)
        return out if token_ids.shape[1] == 1 else {"hidden": out["hidden"]}


@pytest.fixture(scope="module")
def no_logits_graph(tmp_path_factory):
    d = tmp_path_factory.mktemp("no_logits")
    torch.manual_seed(2)
    module = PrefillWithoutLogits().eval()
    lower(module, {name: _samples(t) for name, t in SIGNATURES.items()}, d / "g.tflite")
    return module, d / "g.tflite"


# Tolerances relative to the largest |output| vs torch: fp32 only reorders sums; fp16 weights
# carry ~5e-4 relative rounding; int4-b32 on this 64-wide toy (four chained matmuls) is rough.
@pytest.mark.parametrize("recipe,tol", [("fp32", 1e-5), ("fp16", 5e-3), ("int4", 0.3)])
def test_weight_unused_by_one_signature(no_logits_graph, tmp_path, recipe, tol):
    module, graph = no_logits_graph
    out = tmp_path / "m.tflite"
    report = splice_weights(graph, out, _state(module), recipe)
    assert report.by_name()["head.weight"].signatures == ("decode",)
    model = flatbuf.read_model(out)
    names = [{flatbuf.s(t.name) for t in sg.tensors} for sg in model.subgraphs]
    assert not any(n.startswith("prefill_8/head.weight") for n in names[0])
    assert "decode/head.weight" in names[1]
    for sig, t in SIGNATURES.items():
        got = check.run_compiled(out, sig, _inputs(t))
        with torch.no_grad():
            ref = module(torch.from_numpy(_inputs(t)["token_ids"]), torch.arange(t, dtype=torch.int32))
        assert set(got) == set(ref)
        for k in got:
            assert np.abs(got[k] - ref[k].numpy()).max() / np.abs(ref[k].numpy()).max() < tol


class PreTransposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.w_t = nn.Parameter(torch.randn(256, 256) * 0.05)  # [in, out]: x @ w_t lowers to BATCH_MATMUL

    def forward(self, x):
        return {"y": x @ self.w_t}


def test_large_weight_in_a_non_matmul_op_is_reported(tmp_path):
    lower(PreTransposed().eval(), {"s": {"x": torch.zeros(1, 4, 256)}}, tmp_path / "g.tflite")
    report = splice_weights(tmp_path / "g.tflite", tmp_path / "m.tflite", _state(PreTransposed()), "int8")
    assert report.by_name()["w_t"].format == "fp32"
    assert len(report.warnings) == 1 and "w_t" in report.warnings[0] and "BATCH_MATMUL" in report.warnings[0]


def test_relink_renames_external_groups(toy, tmp_path):
    from converters.lowering import LITERTLM_GROUP, relink

    a = tmp_path / "a" / "model.tflite"
    splice_weights(toy["graph"], a, toy["state"], "int8", external={"embed.weight": "embedder_weights.bin"})
    b = tmp_path / "b" / "model.tflite"
    relink(a, b, {"embedder_weights.bin": LITERTLM_GROUP})
    (tmp_path / "b" / LITERTLM_GROUP).write_bytes((tmp_path / "a" / "embedder_weights.bin").read_bytes())
    model = flatbuf.read_model(b)
    assert [flatbuf.s(g.name) for g in model.externalBufferGroups] == [LITERTLM_GROUP]
    assert all(buf.offset % 64 == 0 for buf in model.buffers if buf.offset > 1)
    x, y = _run_all(a, check.run_compiled), _run_all(b, check.run_compiled)
    for sig in SIGNATURES:
        for k in x[sig]:
            np.testing.assert_array_equal(x[sig][k], y[sig][k])
    with pytest.raises(ExternalWeightsError, match="no external group"):
        relink(a, tmp_path / "c.tflite", {"nope.bin": "x"})
