"""edge/format/contract.py: the declared artifact contract accepts what LiteRT-LM binds and refuses each
way an artifact can break it (every build checks every artifact against it)."""

from __future__ import annotations

import copy

import pytest

from edge.format import contract
from edge.format import signatures as sig


def _t(shape, dtype="float32"):
    return {"shape": list(shape), "dtype": dtype}


def _decoder(prefill=(8, 16), c=96, h=64, l=6, p=16, v=300):
    def one(t, logits):
        caches = {"kv_cache_k_0": _t((1, 2, c, 32)), "kv_cache_v_0": _t((1, 2, 32, c)),
                  "kv_cache_k_1": _t((1, 1, c, 64)), "kv_cache_v_1": _t((1, 1, 64, c))}
        inputs = {"embeddings": _t((1, t, h)), "per_layer_embeddings": _t((1, t, l, p)),
                  "input_pos": _t((t,), "int32"), "mask": _t((1, 1, t, c)), **caches}
        return {"inputs": inputs, "outputs": {**caches, **({"logits": _t((1, 1, v))} if logits else {})}}

    return {**{sig.prefill_name(sig.PREFILL_DECODE, n): one(n, False) for n in prefill}, sig.DECODE: one(1, True)}


KNOWN = {"H": 64, "L": 6, "P": 16, "C": 96}


def test_a_decoder_as_litert_lm_binds_it_passes():
    contract.check("prefill_decode", _decoder(), KNOWN, "decoder.tflite")


def test_towers_as_litert_lm_binds_them_pass():
    contract.check("vision_encoder", {"vision_192": {"inputs": {"images": _t((1, 192, 192, 3))},
                                                     "outputs": {"features": _t((1, 16, 2048))}}}, KNOWN, "v")
    contract.check("audio_adapter", {"audio_adapter": {
        "inputs": {"mask": _t((1, 188), "bool"), "features": _t((1, 188, 32))},
        "outputs": {"mm_embedding": _t((1, 188, 64))}}}, KNOWN, "a")
    contract.check("end_of_audio", {"end_of_audio": {"inputs": {}, "outputs": {"embeddings": _t((1, 1, 64))}}},
                   KNOWN, "e")


def _broken(edit):
    s = _decoder()
    edit(s)
    return s


@pytest.mark.parametrize("what,edit,message", [
    ("no decode", lambda s: s.pop("decode"), "no signature 'decode'"),
    ("an extra signature", lambda s: s.update(verify=s["decode"]), "undeclared signature 'verify'"),
    ("input_pos as float", lambda s: s["decode"]["inputs"]["input_pos"].update(dtype="float32"),
     "input_pos is float32, declared int32"),
    ("a context that is not the model's", lambda s: s["prefill_8"]["inputs"]["mask"].update(shape=[1, 1, 8, 64]),
     "mask has shape"),
    ("a prefill whose length is not its name's", lambda s: s["prefill_8"]["inputs"]["embeddings"].update(
        shape=[1, 9, 64]), "embeddings has shape"),
    ("a cache whose V is not transposed", lambda s: s["decode"]["inputs"]["kv_cache_v_1"].update(
        shape=[1, 1, 96, 64]), "kv_cache_v_1 has shape"),
    ("no logits", lambda s: s["decode"]["outputs"].pop("logits"), "outputs are"),
])
def test_each_break_is_named(what, edit, message):
    with pytest.raises(contract.ContractError, match=message):
        contract.check("prefill_decode", _broken(edit), KNOWN, "decoder.tflite")


def test_input_order_is_part_of_the_contract():
    """The audio adapter's inputs are bound by position: mask first, then features."""
    good = {"audio_adapter": {"inputs": {"mask": _t((1, 188), "bool"), "features": _t((1, 188, 32))},
                              "outputs": {"mm_embedding": _t((1, 188, 64))}}}
    swapped = copy.deepcopy(good)
    swapped["audio_adapter"]["inputs"] = dict(reversed(list(good["audio_adapter"]["inputs"].items())))
    with pytest.raises(contract.ContractError, match="inputs are"):
        contract.check("audio_adapter", swapped, KNOWN, "audio_adapter.tflite")


def test_tower_sizes_must_agree_between_tensors():
    bad = {"vision_adapter": {"inputs": {"soft_tokens": _t((1, 16, 2048))},
                              "outputs": {"mm_embedding": _t((1, 17, 65))}}}  # width 65 is not H
    with pytest.raises(contract.ContractError, match="mm_embedding"):
        contract.check("vision_adapter", bad, KNOWN, "vision_adapter.tflite")
    with pytest.raises(contract.ContractError, match="unknown artifact kind"):
        contract.check("vision_decoder", bad, KNOWN, "x")


def test_the_contract_uses_the_runtime_names():
    """edge/format/signatures.py (what the simulator calls) names the same signatures as the contract."""
    for kind in (sig.EMBEDDER, sig.PER_LAYER_EMBEDDER, sig.PREFILL_DECODE):
        declared = [s.name for s in contract.KINDS[kind].signatures]
        assert declared == [sig.prefill_name(kind, 0).replace("0", "{T}"), sig.decode_name(kind)]


def test_text_artifacts_are_bound_by_name_in_any_order():
    s = _decoder()
    s["decode"]["inputs"] = dict(sorted(s["decode"]["inputs"].items()))  # as the signature defs list them
    contract.check("prefill_decode", s, KNOWN, "decoder.tflite")
    assert not contract.KINDS["prefill_decode"].positional and contract.KINDS["audio_adapter"].positional


def test_the_vision_signature_names_the_image_width():
    wrong = {"vision_100": {"inputs": {"images": _t((1, 192, 192, 3))}, "outputs": {"features": _t((1, 16, 2048))}}}
    with pytest.raises(contract.ContractError, match="images has shape"):
        contract.check("vision_encoder", wrong, KNOWN, "vision_encoder.tflite")
