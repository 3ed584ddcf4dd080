"""Image/audio settings are read wherever transformers 5 writes them: the flat
preprocessor_config.json of the released checkpoints, or processor_config.json's nested
`image_processor` / `feature_extractor` (what `Gemma3nProcessor.save_pretrained` writes today)."""

from __future__ import annotations

import json

import pytest

from edge.runtime.audio import AudioFeatureExtractor
from edge.runtime.image import ImageProcessorConfig


def _write(d, name, obj):
    (d / name).write_text(json.dumps(obj))


def test_nested_processor_config_is_read(tmp_path):
    _write(tmp_path, "processor_config.json", {
        "processor_class": "Gemma3nProcessor",
        "image_processor": {"size": {"height": 512, "width": 384}, "resample": 2},
        "feature_extractor": {"max_frequency": 7000.0, "mel_floor": 1e-4},
    })
    assert ImageProcessorConfig.from_checkpoint(tmp_path).size == (512, 384)
    fe = AudioFeatureExtractor.from_checkpoint(tmp_path)
    assert fe.max_frequency == 7000.0 and fe.mel_floor == 1e-4


def test_flat_file_wins_and_defaults_without_either(tmp_path):
    assert ImageProcessorConfig.from_checkpoint(tmp_path) == ImageProcessorConfig()
    assert AudioFeatureExtractor.from_checkpoint(tmp_path) == AudioFeatureExtractor()
    _write(tmp_path, "processor_config.json", {"image_processor": {"size": {"height": 512, "width": 512}}})
    _write(tmp_path, "preprocessor_config.json", {"size": {"height": 256, "width": 256}})
    assert ImageProcessorConfig.from_checkpoint(tmp_path).size == (256, 256)


def test_build_carries_nested_settings_and_refuses_what_the_engine_cannot_compute(tiny_ckpt, tmp_path):
    import shutil

    pytest.importorskip("torch")
    from converters.build import BuildOptions, build
    from edge.errors import UserError

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    flat = json.loads((ckpt / "preprocessor_config.json").read_text())
    (ckpt / "preprocessor_config.json").unlink()
    _write(ckpt, "processor_config.json", {"processor_class": "Gemma3nProcessor", "feature_extractor": flat,
                                           "image_processor": flat})
    # The session's shapes (conftest build_tiny / mm_artifacts): the lowered graphs are reused.
    opts = BuildOptions(recipe="fp32", prefill=(8, 16), context=96, modalities=("text", "audio"))
    out = build(ckpt, tmp_path / "out", opts)
    assert json.loads((out / "preprocessor_config.json").read_text())["mel_floor"] == flat["mel_floor"]
    # per-bin normalisation: LiteRT-LM's audio front end has only its own built-in constants.
    _write(ckpt, "processor_config.json", {"feature_extractor": {**flat, "per_bin_mean": [0.0] * 128,
                                                                 "per_bin_stddev": [1.0] * 128}})
    with pytest.raises(UserError, match="per_bin_mean"):
        build(ckpt, tmp_path / "out2", opts)  # refused before any lowering
    assert not (tmp_path / "out2").exists()


def test_image_settings_the_engine_cannot_apply_are_refused_before_work(tiny_ckpt, tmp_path):
    import shutil

    pytest.importorskip("torch")
    from converters.build import BuildOptions, build
    from edge.errors import UserError

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    flat = json.loads((ckpt / "preprocessor_config.json").read_text())
    _write(ckpt, "preprocessor_config.json", {**flat, "do_normalize": True})
    with pytest.raises(UserError, match="do_normalize"):
        build(ckpt, tmp_path / "out", BuildOptions(recipe="fp32", modalities=("text", "vision")))
    assert not (tmp_path / "out").exists()
