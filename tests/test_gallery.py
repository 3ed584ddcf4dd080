"""`gemma3n-edge gallery`: what AI Edge Gallery needs, read from the bundle (edge/device/gallery.py)."""

import json

import pytest

from edge.cli import main
from edge.errors import UserError
from edge.device.gallery import GIB, RAM_SHARE, describe, file_name_for


def test_multimodal_bundle_turns_on_image_and_audio(mm_artifacts, tmp_path, capsys):
    entry_file = tmp_path / "model_allowlist_test.json"
    assert main(["gallery", str(mm_artifacts), "--name", "my-finetune", "--entry", str(entry_file)]) == 0
    out = capsys.readouterr().out
    assert "Support image on, Support audio on" in out
    assert "Default max tokens 320" in out  # the bundle's context (mm_artifacts: 320)
    assert "WARNING: this bundle needs LiteRT-LM 0.14.0" in out  # audio: Gallery 1.0.18's 0.11.0 answers otherwise
    (entry,) = json.loads(entry_file.read_text())["models"]
    assert entry["llmSupportImage"] and entry["llmSupportAudio"]
    assert entry["taskTypes"] == ["llm_chat", "llm_prompt_lab", "llm_ask_image", "llm_ask_audio"]
    assert entry["sizeInBytes"] == (mm_artifacts / "model.litertlm").stat().st_size
    assert entry["modelFile"] == "my-finetune.litertlm"
    assert entry["localModelFilePathOverride"] == "/data/local/tmp/llm/my-finetune.litertlm"
    assert entry["defaultConfig"]["maxTokens"] == 320
    assert entry["defaultConfig"]["visionAccelerator"] == "cpu"
    # Every field Gallery's AllowedModel declares non-null (ModelAllowlist.kt) is present.
    for key in ("name", "modelId", "modelFile", "commitHash", "description", "sizeInBytes", "taskTypes"):
        assert entry[key] not in (None, "")


def test_text_only_bundle_and_ram_from_the_memory_model(tiny_artifacts, capsys):
    from edge.bench import device_budget

    m = describe(tiny_artifacts)
    assert (m.image, m.audio) == (False, False)
    assert m.min_runtime == "0.11.0" and m.gallery_runtime_ok
    assert m.max_num_tokens == 96 and m.max_tokens == 100  # Gallery's slider starts at 100
    assert m.ram_need > device_budget(tiny_artifacts, "pixel8")["resident_total_bytes"]
    assert m.min_device_memory_gb * GIB * RAM_SHARE >= m.ram_need
    assert main(["gallery", str(tiny_artifacts / "model.litertlm"), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["entry"]["taskTypes"] == ["llm_chat", "llm_prompt_lab"]
    assert "visionAccelerator" not in facts["entry"]["defaultConfig"]


def test_gallery_file_names():
    assert file_name_for("my model") == "my-model.litertlm"
    assert file_name_for("gemma-web-v2.litertlm") == "gemma-w-v2.litertlm"  # "-web" means a web model to Gallery
    assert file_name_for("///") == "model.litertlm"


def test_not_a_bundle_is_refused(tmp_path, tiny_bundle):
    with pytest.raises(UserError, match="no model.litertlm"):
        describe(tmp_path)
    broken = tmp_path / "broken.litertlm"
    data = bytearray(tiny_bundle.read_bytes())
    broken.write_bytes(bytes(data[: len(data) // 2]))  # cut off inside the sections
    with pytest.raises(UserError):
        describe(broken)
