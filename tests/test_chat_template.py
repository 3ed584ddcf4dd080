"""The chat the phone renders is the chat the model was trained on: for the checkpoint's own
template and a custom one, the token ids Google's engine prefills for a system prompt +
multi-turn + image + audio conversation equal transformers' `apply_chat_template`, and a
template the engine would render differently fails the build with a diff."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import edge  # noqa: E402
from converters.build import BuildOptions, build  # noqa: E402
from converters.chat_template import ChatTemplateError, conversations  # noqa: E402
from edge.format.litertlm import read_bundle  # noqa: E402
from edge.format.manifest_verify import load_manifest  # noqa: E402

DATA = Path(edge.__file__).parent / "data"
OPTS = dict(recipe="int8", prefill=(16, 64), context=320, modalities=("text", "vision", "audio"))
# A custom template: the system prompt as a turn of its own, "### " headers inside turns.
CUSTOM = """{{- bos_token -}}
{%- for message in messages -%}
  {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
  {{- '<start_of_turn>' ~ role ~ '\\n### ' ~ role ~ ': ' -}}
  {%- if message['content'] is string -%}{{- message['content'] | trim -}}
  {%- else -%}{%- for item in message['content'] -%}
    {%- if item['type'] == 'image' -%}{{- '<image_soft_token>' -}}
    {%- elif item['type'] == 'audio' -%}{{- '<audio_soft_token>' -}}
    {%- elif item['type'] == 'text' -%}{{- item['text'] | trim -}}{%- endif -%}
  {%- endfor -%}{%- endif -%}
  {{- '<end_of_turn>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}
"""


@pytest.fixture(scope="module")
def clip_30s(tmp_path_factory):
    """The packaged sentence repeated to 30 s: HF's processor gives every clip 188 soft tokens,
    the engine a count from the clip's length; at 30 s they agree."""
    import soundfile as sf

    audio, rate = sf.read(DATA / "sentence.flac", dtype="float32")
    out = tmp_path_factory.mktemp("clip") / "clip30.wav"
    sf.write(out, np.resize(audio, 30 * rate), rate)
    return out


@pytest.fixture(scope="module", params=["checkpoint", "custom"])
def bundle_and_ckpt(request, trained_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"chat_{request.param}")
    ckpt = trained_ckpt
    if request.param == "custom":  # the custom template given as the checkpoint's own, as a fine-tuner ships it
        ckpt = tmp / "ckpt"
        shutil.copytree(trained_ckpt, ckpt)
        (ckpt / "chat_template.jinja").write_text(CUSTOM)
    # Context 512: the media conversation is 323 tokens, past the demo's 320.
    return build(ckpt, tmp / "art", BuildOptions(**{**OPTS, "context": 512})), ckpt


def _hf_messages(messages):
    import soundfile as sf
    from PIL import Image

    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{"type": "image", "image": Image.open(c["path"])} if c["type"] == "image" else
                       {"type": "audio", "audio": sf.read(c["path"], dtype="float32")[0]} if c["type"] == "audio"
                       else c for c in content]
        out.append({**m, "content": content})
    return out


def test_engine_prompt_equals_apply_chat_template(bundle_and_ckpt, clip_30s):
    from edge.runtime.engine import Engine

    art, ckpt = bundle_and_ckpt
    processor = transformers.AutoProcessor.from_pretrained(ckpt)
    tokens = load_manifest(art).model.tokens
    image_rows = load_manifest(art).model.image_soft_tokens + 1  # the adapter's rows end with <end_of_image>
    engine = Engine(art / "model.litertlm", benchmark=True)
    try:
        for name, messages in conversations(DATA / "picture.png", clip_30s).items():
            n_img = sum(c.get("type") == "image" for m in messages if isinstance(m["content"], list) for c in m["content"])
            n_aud = sum(c.get("type") == "audio" for m in messages if isinstance(m["content"], list) for c in m["content"])
            want = processor.apply_chat_template(_hf_messages(messages), add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"][0]
            want = [int(i) for i in want]
            audio_rows = sum(i == tokens.audio_soft for i in want) // max(n_aud, 1)
            got = engine.prompt_ids(messages, {"image": [image_rows] * n_img, "audio": [audio_rows] * n_aud}, tokens)
            assert got == want, name
            # The rebuilt list is what the engine really prefilled: its own count, media rows included.
            assert engine.prefill_count(messages) == len(got), name
    finally:
        engine.close()


def test_bundle_carries_the_template(bundle_and_ckpt):
    art, ckpt = bundle_and_ckpt
    assert (art / "chat_template.jinja").read_text() == (ckpt / "chat_template.jinja").read_text()
    assert "chat_template.jinja" in json.loads((art / "manifest.json").read_text())["files"]
    names = [s.items.get("gemma3n_edge") for s in read_bundle(art / "model.litertlm").sections]
    assert "chat_template.jinja" in names


def _with_template(trained_ckpt, tmp_path, text):
    f = tmp_path / "template.jinja"
    f.write_text(text)
    return str(f)


@pytest.mark.parametrize("edit, expect", [
    # Jinja2's str.join; the engine's rewrite of `.join(` renders only the separator: silently other text.
    (("'<start_of_turn>' ~ role ~ '\\n### ' ~ role ~ ': '", "'<start_of_turn>' ~ '/'.join([role, 'x']) ~ '\\n'"),
     r"renders the chat template differently.*\n--- transformers"),
    # A Python string method the engine's template language lacks: it cannot render at all.
    (("'\\n### ' ~ role ~ ': '", "'\\n### ' ~ role.upper() ~ ': '"), "cannot render the chat template"),
])
def test_a_template_the_engine_cannot_carry_fails_the_build(trained_ckpt, tmp_path, edit, expect):
    template = _with_template(trained_ckpt, tmp_path, CUSTOM.replace(*edit))
    assert CUSTOM.replace(*edit) != CUSTOM
    with pytest.raises((ChatTemplateError, edge.errors.UserError), match=expect):
        build(trained_ckpt, tmp_path / "art", BuildOptions(**OPTS, chat_template=template))
    assert not (tmp_path / "art").exists()


def test_chat_template_flag_overrides_the_checkpoints(trained_ckpt, tmp_path):
    template = _with_template(trained_ckpt, tmp_path, CUSTOM)
    art = build(trained_ckpt, tmp_path / "art", BuildOptions(**{**OPTS, "modalities": ("text",)}, chat_template=template))
    assert (art / "chat_template.jinja").read_text() == CUSTOM
    # The simulator's single-turn form comes from the same template.
    assert load_manifest(art).model.chat_template == "<start_of_turn>user\n### user: {prompt}<end_of_turn>\n<start_of_turn>model\n"
