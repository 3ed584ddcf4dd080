"""Quantizers vs ai-edge-quantizer 0.10.0's own functions, and recipe rules as data."""

from __future__ import annotations

import numpy as np
import pytest

from converters.quant import RECIPES, QuantSpec, Recipe, RecipeError, Rule, get_recipe
from converters.quant import quantize as qz
from converters.quant.recipes import EMB, FC, OTHER

aeq_tensor = pytest.importorskip("ai_edge_quantizer.algorithms.uniform_quantize.uniform_quantize_tensor")
qtyping = pytest.importorskip("ai_edge_quantizer.qtyping")


def _weights(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    # Rows of very different magnitudes, like trained matrices (and unlike a plain randn).
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, cols)) * rng.uniform(1e-3, 3.0, (rows, 1))).astype(np.float32)


def _aeq_int8(w):
    zp, scale = aeq_tensor.tensor_zp_scale_from_min_max(
        w.min(1, keepdims=True), w.max(1, keepdims=True), 8, True, qtyping.QuantGranularity.CHANNELWISE)
    params = qtyping.UniformQuantParams(num_bits=8, quantized_dimension=0, scale=scale, zero_point=zp, symmetric=True)
    return aeq_tensor.uniform_quantize(w, params), scale.ravel()


def _aeq_int4(w, block):
    b = w.reshape(w.shape[0], -1, block)
    granularity = getattr(qtyping.QuantGranularity, f"BLOCKWISE_{block}")
    zp, scale = aeq_tensor.tensor_zp_scale_from_min_max(b.min(2), b.max(2), 4, True, granularity)
    params = qtyping.UniformQuantParams(num_bits=4, quantized_dimension=1, scale=scale, zero_point=zp,
                                        symmetric=True, block_size=block)
    return aeq_tensor.uniform_quantize(w, params, is_blockwise_quant=True), scale


def test_int8_matches_aeq_bit_for_bit():
    w = _weights(96, 200)
    w[5] = 0.0  # all-zero row: AEQ's 1e-9 floor gives a small normal scale, no clamp needed
    q_ref, s_ref = _aeq_int8(w)
    q, s = qz.quantize_int8_channelwise(w)
    assert q.dtype == np.int8 and s.dtype == np.float32
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(s, s_ref)
    assert s[5] > 0 and np.isfinite(s).all()


@pytest.mark.parametrize("block", [32, 128])
def test_int4_blockwise_matches_aeq_bit_for_bit(block):
    w = _weights(64, 512, seed=block)
    q_ref, s_ref = _aeq_int4(w, block)
    q, s = qz.quantize_int4_blockwise(w, block)
    assert s.dtype == np.float16 and s.shape == (64, 512 // block)
    np.testing.assert_array_equal(s.astype(np.float32), s_ref)  # AEQ keeps the fp16-rounded values in fp32
    np.testing.assert_array_equal(q, q_ref)
    assert q.min() >= -8 and q.max() <= 7


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # AEQ itself divides 0 by the 0 scale here
def test_int4_zero_block_is_clamped_where_aeq_gives_zero():
    w = _weights(8, 64)
    w[2, :32] = 0.0
    w[3, 32:] *= 1e-4  # tiny block: scale is a float16 subnormal, not zero: left as AEQ has it
    _, s_ref = _aeq_int4(w, 32)
    q, s = qz.quantize_int4_blockwise(w, 32)
    assert s_ref[2, 0] == 0.0  # AEQ's scale underflows (the XNNPACK "unsupported scale value (0)")
    assert s[2, 0] == np.float16(2.0**-14)
    assert np.all(q[2, :32] == 0)
    assert 0 < s[3, 1] < 2.0**-14 and s[3, 1] == s_ref[3, 1]
    mask = np.ones_like(s_ref, bool)
    mask[2, 0] = False
    np.testing.assert_array_equal(s.astype(np.float32)[mask], s_ref[mask])


def test_int4_pack_roundtrip_and_nibble_order():
    q = np.array([[1, -2, 7, -8]], np.int8)
    packed = qz.pack_int4(q)
    assert packed.tolist() == [0xE1, 0x87]  # even element in the low nibble
    np.testing.assert_array_equal(qz.unpack_int4(packed, 4), q.ravel())


def test_chunked_quantization_equals_whole():
    w = _weights(100, 256, seed=3)
    q_all, s_all = qz.quantize_int4_blockwise(w, 32)
    parts = [qz.quantize_int4_blockwise(w[a:a + 7], 32) for a in range(0, 100, 7)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), q_all)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), s_all)
    packed_parts = b"".join(qz.pack_int4(p[0]).tobytes() for p in parts)
    assert packed_parts == qz.pack_int4(q_all).tobytes()


def test_dequantized_error_is_bounded_by_half_a_step():
    w = _weights(32, 128, seed=4)
    q, s = qz.quantize_int8_channelwise(w)
    assert np.all(np.abs(qz.dequantize_int8_channelwise(q, s) - w) <= s[:, None] * 0.5 * (1 + 1e-6))
    q4, s4 = qz.quantize_int4_blockwise(w, 32)
    step = np.repeat(s4.astype(np.float32), 32, axis=1)
    # bf16 rounding of the scale can shrink it below absmax/7 by < 2^-8, pushing the max value
    # one clipped step over: allow half a step plus that rounding.
    assert np.all(np.abs(qz.dequantize_int4_blockwise(q4, s4) - w) <= step * (0.5 + 8 * 2.0**-8))


def test_int4_per_channel():
    """int4-pc: one scale per row, values in [-8, 7], error within half a step; the recipe puts the
    decoder's matmuls there and refuses odd rows (two values per byte)."""
    w = _weights(32, 128, seed=5)
    q, s = qz.quantize_int4_channelwise(w)
    assert q.min() >= -8 and q.max() <= 7 and s.shape == (32,)
    np.testing.assert_allclose(s, np.abs(w).max(axis=1) / 7, rtol=1e-6)
    assert np.all(np.abs(qz.dequantize_int8_channelwise(q, s) - w) <= s[:, None] * 0.5 * (1 + 1e-6))
    r = get_recipe("int4-pc")
    assert r.decide("decoder", "layers.0.mlp.up_proj.weight", (256, 128), frozenset({FC})).spec.label == "int4-pc"
    assert r.decide("per_layer_embedder", "table", (256, 128), frozenset({EMB})).spec.label == "int4-b32"
    odd = r.decide("decoder", "layers.0.mlp.up_proj.weight", (256, 129), frozenset({FC}))
    assert odd.spec.label == "int8" and "odd" in odd.skipped[0]


def test_blockwise_shape_errors_are_clear():
    with pytest.raises(qz.QuantizationError, match="not a multiple of 32"):
        qz.quantize_int4_blockwise(np.ones((4, 48), np.float32), 32)
    with pytest.raises(qz.QuantizationError, match="2-D"):
        qz.quantize_int8_channelwise(np.ones(16, np.float32))
    with pytest.raises(qz.QuantizationError, match="float16 range"):
        qz.to_fp16(np.array([1e6], np.float32))


# ---------------------------------------------------------------------------------------------
# recipes


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(RecipeError) as e:
        get_recipe("int3")
    for name in RECIPES:
        assert name in str(e.value)


def test_every_recipe_ends_with_a_float_catch_all():
    for recipe in RECIPES.values():
        d = recipe.decide("anything", "x.weight", (3, 5), frozenset({OTHER}))
        assert d.spec.dtype == "fp32", recipe.name
        assert all(rule.why for rule in recipe.rules)


@pytest.mark.parametrize("name,shape,kinds,expected", [
    ("layers.0.mlp.up_proj.weight", (256, 64), {FC}, "int4-b32"),
    ("embed.weight", (512, 64), {EMB}, "int4-b32"),
    ("tied.weight", (512, 64), {FC, EMB}, "int4-b32"),  # one tensor both as table and lm_head
    ("odd.weight", (64, 48), {FC}, "int8"),  # 48 % 32 != 0: falls through to int8
    ("altup.coefs.weight", (16, 4), {FC}, "fp32"),  # tiny
    ("norm.weight", (2048,), {OTHER}, "fp32"),
    ("mixed_use.weight", (256, 64), {FC, OTHER}, "fp32"),  # also feeds a MUL: must stay float
])
def test_int4_recipe_decisions(name, shape, kinds, expected):
    assert get_recipe("int4").decide("decoder", name, shape, frozenset(kinds)).spec.label == expected


def test_int4_b128_and_fp16():
    assert get_recipe("int4-b128").decide("decoder", "w", (64, 256), frozenset({FC})).spec.label == "int4-b128"
    assert get_recipe("int4-b128").decide("decoder", "w", (64, 96), frozenset({FC})).spec.label == "int8"
    assert get_recipe("fp16").decide("decoder", "w", (64, 96), frozenset({FC})).spec.label == "fp16"
    assert get_recipe("fp16").decide("decoder", "n", (64,), frozenset({OTHER})).spec.label == "fp32"


def test_mixed_recipe_by_component():
    mixed = get_recipe("mixed")
    table = (262144, 256)
    assert mixed.decide("per_layer_embedder", "embed_tokens_per_layer.weight", table, frozenset({EMB})).spec.label == "int4-b32"
    assert mixed.decide("embedder", "embed_tokens.weight", table, frozenset({EMB})).spec.label == "int8"
    assert mixed.decide("decoder", "model.language_model.embed_tokens.weight", table, frozenset({FC})).spec.label == "int8"
    assert mixed.decide("decoder", "layers.3.self_attn.q_proj.weight", (2048, 2048), frozenset({FC})).spec.label == "int4-b32"
    assert mixed.decide("vision_encoder", "blocks.0.conv.weight", (64, 96), frozenset({FC})).spec.label == "int8"
    assert mixed.decide("decoder", "layers.3.altup.prediction_coefs.weight", (16, 4), frozenset({FC})).spec.label == "fp32"


def test_first_applicable_rule_wins_and_skips_are_reported():
    recipe = Recipe("t", (Rule(QuantSpec("int4", 32), "a", name=r"a\..*"), Rule(QuantSpec("int8"), "b"),
                          Rule(QuantSpec("fp32"), "c")))
    d = recipe.decide("m", "a.w", (8, 40), frozenset({FC}))
    assert (d.spec.label, d.why) == ("int8", "b") and "not a multiple of 32" in d.skipped[0]
    assert recipe.decide("m", "b.w", (8, 64), frozenset({FC})).why == "b"
    assert recipe.decide("m", "b.w", (8, 64), frozenset({OTHER})).why == "c"  # int8 cannot feed OTHER
    with pytest.raises(RecipeError, match="catch-all"):
        Recipe("no-fallback", (Rule(QuantSpec("int8"), "x"),)).decide("m", "n", (4,), frozenset({OTHER}))


def test_malformed_specs_are_rejected():
    with pytest.raises(RecipeError):
        QuantSpec("int8", 32)  # only int4 has blocks (QuantSpec("int4") is int4 per channel)
    with pytest.raises(RecipeError):
        QuantSpec("int3")
    with pytest.raises(RecipeError):
        Rule(QuantSpec("fp32"), "x", ops=frozenset({"CONV"}))
