"""`--recipe` parsed once (converters/quant/recipes.py RecipeChoice): a recipe for the build and
per-artifact overrides, each component's precision resolved from it."""

from __future__ import annotations

import pytest

from converters.quant.recipes import RecipeChoice, RecipeError


def _components():
    from converters.components import all_components

    return {c.key: c for c in all_components()}


def test_a_plain_name_keeps_each_components_default_precision():
    c = _components()
    choice = RecipeChoice.parse("int4")
    assert str(choice) == "int4"
    assert choice.for_component(c["prefill_decode"]) == "int4"
    assert choice.for_component(c["per_layer_embedder"]) == "int4"
    # int4 loses the towers' features (55-60% error): they stay int8 unless asked for.
    assert choice.for_component(c["vision_encoder"]) == choice.for_component(c["audio_encoder"]) == "int8"
    assert RecipeChoice.parse("mixed").for_component(c["audio_adapter"]) == "mixed"  # its own rule sends towers to int8


def test_overrides_by_modality_and_by_artifact():
    c = _components()
    choice = RecipeChoice.parse("int4, vision=fp16, audio_encoder=fp32 ,audio=int8")
    assert str(choice) == "int4,vision=fp16,audio_encoder=fp32,audio=int8"
    assert choice.for_component(c["vision_adapter"]) == "fp16"
    assert choice.for_component(c["audio_encoder"]) == "fp32"  # the artifact's name wins over its modality
    assert choice.for_component(c["audio_adapter"]) == "int8"
    assert choice.for_component(c["embedder"]) == "int4"
    assert RecipeChoice.parse(choice) is choice


@pytest.mark.parametrize("text,message", [
    ("int3", "unknown quantization recipe 'int3'"),
    ("int4,vision=int3", "unknown quantization recipe 'int3'"),
    ("int4,vision", "'vision' is not KEY=RECIPE"),
    ("int4,=int8", "is not KEY=RECIPE"),
    ("int4,audio=int8,audio=fp16", "a key is given twice"),
])
def test_bad_choices_are_refused_by_name(text, message):
    with pytest.raises(RecipeError, match=message):
        RecipeChoice.parse(text)


def test_an_override_must_name_something_built():
    choice = RecipeChoice.parse("int8,audio=fp16")
    choice.check_keys({"text", "audio", "audio_encoder"})
    with pytest.raises(RecipeError, match="audio is not a modality or artifact of this build"):
        choice.check_keys({"text", "embedder", "decoder"})


def test_a_build_takes_each_artifacts_own_precision(trained_ckpt, tmp_path):
    """`--recipe int8,audio=fp16`: the audio artifacts fp16, the rest int8; the manifest says both."""
    from converters.build import BuildOptions, build
    from edge.format.manifest import read_manifest

    out = build(trained_ckpt, tmp_path / "art", BuildOptions(recipe="int8,audio=fp16", prefill=(16, 64), context=320,
                                                             modalities=("text", "audio"), bundle=False))
    m = read_manifest(out)
    assert m.recipe == {"name": "int8,audio=fp16"}
    formats = {k: a.extra["weight_format"] for k, a in m.artifacts.items()}
    assert formats["audio_encoder"] == formats["audio_adapter"] == "float16"
    assert formats["prefill_decode"] == formats["embedder"] == "int8"
    with pytest.raises(RecipeError, match="vision is not a modality or artifact of this build"):
        build(trained_ckpt, tmp_path / "bad", BuildOptions(recipe="int8,vision=fp16", modalities=("text",)))
    assert not (tmp_path / "bad").exists()
