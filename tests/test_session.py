"""edge/runtime/session.py: one model opened once from a directory or a bundle; prompt, prefill,
decode and generate agree with each other, and a bundle's extracted copy goes with the session."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from edge.errors import UserError
from edge.runtime.pipeline import GenerationConfig
from edge.runtime.session import Session

pytest.importorskip("ai_edge_litert")


def test_prefill_and_decode_give_generates_greedy_tokens(tiny_artifacts):
    with Session.open(tiny_artifacts) as session:
        config = GenerationConfig(max_tokens=6)
        result = session.generate("The quick brown fox", config=config)
        prompt = session.prompt("The quick brown fox")
        assert tuple(prompt.ids) == result.prompt_ids and prompt.soft == {}
        token = int(np.argmax(session.prefill(prompt)))
        tokens = [token]
        for position in range(len(prompt.ids), len(prompt.ids) + len(result.token_ids) - 1):
            token = int(np.argmax(session.decode(token, position)))
            tokens.append(token)
        assert tuple(tokens) == result.token_ids


def test_a_bundle_runs_like_its_directory_and_its_copy_goes(tiny_artifacts, tiny_bundle):
    config = GenerationConfig(max_tokens=6)
    with Session.open(tiny_artifacts) as d:
        want = d.generate("Hello", config=config).token_ids
    session = Session.open(tiny_bundle)
    copy = session.directory
    assert copy != tiny_artifacts and (copy / "manifest.json").is_file()
    assert session.generate("Hello", config=config).token_ids == want
    session.close()
    del session
    gc.collect()
    assert not copy.exists()


def test_media_prompts_need_the_tower(tiny_artifacts, tmp_path):
    from PIL import Image

    picture = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(picture)
    with Session.open(tiny_artifacts) as session, pytest.raises(UserError, match="no vision encoder"):
        session.prompt("what is this?", images=[picture])


def test_image_and_audio_rows_land_on_their_placeholders(mm_artifacts, tmp_path):
    from edge.samples import picture, voice_clip

    image, clip = picture(tmp_path / "p.png", 40, 60), voice_clip(tmp_path / "v.wav", 1.0)
    with Session.open(mm_artifacts) as session:
        prompt = session.prompt("describe", images=[image], audio=[clip])
        tokens = session.manifest.model.tokens
        placeholders = [p for p, i in enumerate(prompt.ids) if i in (tokens.image_soft, tokens.audio_soft)]
        assert placeholders == sorted(prompt.soft) and len(placeholders) > 0
        assert session.generate(prompt=prompt, config=GenerationConfig(max_tokens=3)).token_ids
