"""`parity` compares HF, our simulator and Google's engine on text, image and audio prompts, checks
every artifact against a declared tolerance, and fails, naming the artifact, when one is broken."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("litert_lm")

from edge import samples  # noqa: E402
from edge.parity.run import run_parity, summary_lines  # noqa: E402
from edge.parity.cases import Case, default_cases  # noqa: E402


@pytest.fixture(scope="module")
def full_report(mm_artifacts, tiny_ckpt, tmp_path_factory):
    return run_parity(mm_artifacts, tiny_ckpt, max_tokens=16, workdir=tmp_path_factory.mktemp("media"))


def test_html_report_has_its_pictures(full_report, tmp_path):
    from edge.parity.run import write_html
    from edge.parity.svg import BAD

    page = write_html(full_report, tmp_path / "p.html").read_text()
    # error bars, tower cosines, one agreement strip per prompt, the decoder's error per step
    assert page.count("<svg") == 2 + len(full_report["cases"]) + 1
    bars = page[page.index("<svg"):page.index("</svg>")]
    for name in full_report["artifacts"]:
        assert f">{name}</text>" in bars
    assert f'fill="{BAD}"' not in bars  # every artifact within tolerance: no bar past the line
    strip = page.split("<svg")[3]
    assert strip.count("<rect") == 3 * full_report["cases"][0]["tokens"]


def test_three_way_parity_on_every_modality(full_report):
    r = full_report
    assert r["engine"] and r["ok"], "\n".join(summary_lines(r))
    names = [c["name"] for c in r["cases"]]
    assert names == ["text 1", "text 2", "image (encoder size)", "image (resized)", "audio 2.5 s", "audio 30 s"]
    assert set(r["artifacts"]) == {"embedder", "per_layer_embedder", "decoder", "vision_encoder", "vision_adapter",
                                   "audio_encoder", "audio_adapter", "end_of_audio"}
    assert all(a["within_tolerance"] and a["tolerance"] is not None for a in r["artifacts"].values())
    for case in r["cases"]:
        assert case["tokens"] == 16
        pairs = case["pairs"]
        assert pairs["simulator/engine"]["equal"], case["name"]  # the simulator says what the phone says
        if not case["known"]:  # ... and that is what HF says
            assert pairs["hf/simulator"]["equal"] and pairs["hf/engine"]["equal"], case["name"]
    resized = r["cases"][3]
    assert "resizes images with its own filter" in resized["known"]  # reported, not hidden
    for pair in ("hf/simulator", "hf/engine"):  # where HF parts from the phone, the report says why
        assert resized["pairs"][pair]["equal"] or resized["pairs"][pair]["cause"] == resized["known"]
    lines = summary_lines(r)
    assert any("HF = simulator" in ln and "simulator = engine" in ln for ln in lines)
    assert lines[-1].strip().startswith("result: PASS")


# ----------------------------------------------------------------------------- it can fail


def _tamper(data: bytes, payload: bytes) -> bytes:
    """`data` with the first half of `payload`'s float32 values scaled by 1.5 (a partial scale, so a
    following norm cannot absorb it)."""
    at = data.find(payload)
    assert at >= 0 and data.find(payload, at + 1) < 0, "payload not found exactly once"
    values = np.frombuffer(payload, np.float32).copy()
    values[: len(values) // 2] *= 1.5
    return data[:at] + values.tobytes() + data[at + len(payload):]


def _largest_float_buffer(path: Path) -> bytes:
    from converters.lowering import flatbuf

    model = flatbuf.read_model(path)
    best = b""
    for sg in model.subgraphs:
        for t in sg.tensors:
            if flatbuf.type_name(t.type) == "FLOAT32" and t.buffer:
                data = flatbuf.buffer_bytes(path, model, t)
                best = data if len(data) > len(best) else best
    assert best, f"{path.name} has no float32 constant"
    return best


def _corrupt(src: Path, dst: Path, artifact: str) -> Path:
    """A copy of the artifact directory with one weight of `artifact` wrong and a manifest that
    agrees with the new bytes (as a buggy exporter would write it)."""
    from edge.format.manifest import file_entry, read_manifest, write_manifest

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.litertlm"))
    m = read_manifest(dst)
    spec = m.artifacts[artifact]
    if spec.external_weights:  # the embedding tables
        path = dst / spec.external_weights[0]
        data = path.read_bytes()
        half = (len(data) // 8) * 4
        path.write_bytes(_tamper(data, data[:half]))
    else:
        path = dst / spec.file
        path.write_bytes(_tamper(path.read_bytes(), _largest_float_buffer(path)))
    files = {k: v for k, v in m.files.items() if k != "model.litertlm"}  # the engine is not run here
    write_manifest(dst, replace(m, files={**files, path.name: file_entry(path)}))
    return dst


@pytest.fixture(scope="module")
def small_cases(tmp_path_factory):
    d = tmp_path_factory.mktemp("cases")
    return [Case("text", "The for statement is used to iterate."),
            Case("image", "What is in this picture?", images=(str(samples.picture(d / "p.png", 192, 192)),)),
            Case("audio", "What is said here?", audio=(str(samples.voice_clip(d / "a.wav", 2.5)),))]


@pytest.mark.parametrize("artifact", ["embedder", "per_layer_embedder", "prefill_decode", "vision_encoder",
                                      "vision_adapter", "audio_encoder", "audio_adapter", "end_of_audio"])
def test_parity_names_the_broken_artifact(artifact, mm_artifacts, tiny_ckpt, small_cases, tmp_path):
    broken = _corrupt(mm_artifacts, tmp_path / "broken", artifact)
    r = run_parity(broken, tiny_ckpt, cases=small_cases, max_tokens=4, engine=False)
    expected = {"prefill_decode": "decoder"}.get(artifact, artifact)
    assert not r["ok"], "\n".join(summary_lines(r))
    assert r["failing"][0] == expected, r["failing"]
    assert summary_lines(r)[-1].strip().startswith("result: FAIL")
    if artifact == "vision_adapter":  # the picture shows it too: that artifact's bar is red, past the line
        from edge.parity.run import pictures
        from edge.parity.svg import BAD

        bars = pictures(r).split("</svg>")[0]
        bar = bars[bars.index(f">{expected}</text>"):]
        assert bar.index(f'fill="{BAD}"') < bar.index("</rect>")


def test_default_cases_exercise_each_tower(mm_artifacts, tmp_path):
    from edge.format.manifest import read_manifest

    cases = default_cases(read_manifest(mm_artifacts), tmp_path, ("hello",))
    assert [c.name for c in cases] == ["text 1", "image (encoder size)", "image (resized)", "audio 2.5 s", "audio 30 s"]
    from PIL import Image

    assert Image.open(cases[1].images[0]).size == (192, 192) and Image.open(cases[2].images[0]).size != (192, 192)


def test_engine_preprocessing_equals_hf_only_at_the_encoder_size(tmp_path):
    from edge.runtime.image import ImageProcessorConfig, load_image, load_image_as_engine

    cfg = ImageProcessorConfig(size=(192, 192))
    exact, other = samples.picture(tmp_path / "a.png", 192, 192), samples.picture(tmp_path / "b.png", 295, 221)
    np.testing.assert_array_equal(load_image_as_engine(exact, (192, 192)), load_image(exact, cfg))
    diff = np.abs(load_image_as_engine(other, (192, 192)) - load_image(other, cfg)).max()
    assert diff > 0.02  # stb's sRGB Catmull-Rom vs Pillow's bilinear: measured up to 17/255


def test_a_users_jpeg_is_judged_on_what_the_phone_sees(mm_artifacts, tiny_ckpt, tmp_path):
    # Any photo a user brings: JPEG, not the encoder's size. The simulator must say what the
    # engine says; where HF's own preprocessing gives other pixels, the report says so.
    from PIL import Image

    png = samples.picture(tmp_path / "p.png", 240, 320)
    Image.open(png).convert("RGB").save(tmp_path / "photo.jpg", quality=85)
    r = run_parity(mm_artifacts, tiny_ckpt, cases=[Case("photo", "What is in this picture?",
                                                        images=(str(tmp_path / "photo.jpg"),))], max_tokens=8)
    case = r["cases"][0]
    assert r["ok"] and case["pairs"]["simulator/engine"]["equal"], "\n".join(summary_lines(r))
    assert "other pixels" in case["known"]
