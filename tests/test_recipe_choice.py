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
