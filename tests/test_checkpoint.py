"""CheckpointReader: canonical names = transformers' state_dict, strict verification that lists
every problem, damaged files named, sharded and bf16 checkpoints, the tied head and the
KV-shared layers' redundant k/v tensors."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import struct

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from converters.checkpoint import (
    EMBED, INDEX_FILE, LM_HEAD, SINGLE_FILE, CheckpointError, CheckpointReader, expected_tensors, read_header,
)
from converters.gemma3n.config import Gemma3nConfig
from edge.errors import UserError


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt


@pytest.fixture(scope="module")
def cfg(ckpt):
    return Gemma3nConfig.from_hf(ckpt)


@pytest.fixture(scope="module")
def state(ckpt):
    return load_file(ckpt / SINGLE_FILE)


def _write(dst, state, ckpt, name=SINGLE_FILE):
    dst.mkdir(exist_ok=True)
    shutil.copy(ckpt / "config.json", dst / "config.json")
    save_file(state, dst / name, metadata={"format": "pt"})
    return dst


def _shared_layer(cfg):
    return cfg.text.first_kv_shared_layer_idx


# ---------------------------------------------------------------- a good checkpoint


def test_names_and_values_are_what_transformers_loads(ckpt, cfg):
    model = transformers.Gemma3nForConditionalGeneration.from_pretrained(ckpt)
    sd = model.state_dict()
    with CheckpointReader(ckpt) as r:
        report = r.verify(cfg)
        assert report.ignored == ()
        assert set(r.names()) == set(sd) - {LM_HEAD} == set(expected_tensors(cfg))
        for name in r.names():
            assert torch.equal(r.tensor(name), sd[name].float()), name
        assert torch.equal(r.rows(EMBED, 3, 7), sd[EMBED][3:7])


def test_expected_tensors_of_the_released_sizes():
    """Totals as GEMMA3N.md's size table (E4B 7818.5M, E2B 5418.5M parameters), lm_head tied."""
    e4b = Gemma3nConfig()
    e2b = Gemma3nConfig(text=dataclasses.replace(e4b.text, num_hidden_layers=30, intermediate_size=8192,
                                                 num_kv_shared_layers=10, layer_types=None,
                                                 activation_sparsity_pattern=None))
    for cfg, total_m, layers in ((e4b, 7818.5, 35), (e2b, 5418.5, 30)):
        exp = expected_tensors(cfg)
        assert round(sum(math.prod(s) for s in exp.values()) / 1e6, 1) == total_m
        assert LM_HEAD not in exp
        assert exp["model.language_model.embed_tokens_per_layer.weight"] == (262_144, layers * 256)
        store = "model.language_model.layers.19.self_attn.k_proj.weight"
        shared = "model.language_model.layers.20.self_attn.k_proj.weight"
        assert exp[store] == (512, 2048) and shared not in exp
        assert "model.language_model.layers.20.self_attn.q_proj.weight" in exp
        assert exp["model.language_model.layers.0.mlp.down_proj.weight"] == (2048, cfg.text.intermediate_size[0])
        assert any(k.startswith("model.vision_tower.timm_model.blocks.") for k in exp)
        assert any(k.startswith("model.audio_tower.conformer.11.") for k in exp)


# ---------------------------------------------------------------- strictness


def test_verify_lists_every_problem_and_names_the_file(tmp_path, ckpt, cfg, state):
    s = dict(state)
    removed = ["model.language_model.layers.1.mlp.up_proj.weight", "model.audio_tower.conformer.0.norm.weight"]
    for k in removed:
        del s[k]
    s["model.language_model.layers.0.self_attn.extra.weight"] = torch.zeros(2, 2)
    bent = "model.language_model.layers.0.self_attn.o_proj.weight"
    s[bent] = torch.zeros(s[bent].shape[0], s[bent].shape[1] + 1)
    bad = _write(tmp_path / "bad", s, ckpt)
    with CheckpointReader(bad) as r, pytest.raises(CheckpointError) as e:
        r.verify(cfg)
    msg = str(e.value)
    assert str(bad) in msg and "2 missing" in msg and "1 unexpected" in msg and "1 wrong shape" in msg
    for k in [*removed, "model.language_model.layers.0.self_attn.extra.weight", bent]:
        assert k in msg
    o = state[bent].shape
    assert f"expected {[o[0], o[1]]}, found {[o[0], o[1] + 1]}" in msg
    assert isinstance(e.value, UserError)


def test_checkpoint_of_another_config_is_refused(ckpt, cfg):
    other = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, hidden_size_per_layer_input=8))
    with CheckpointReader(ckpt) as r, pytest.raises(CheckpointError, match="wrong shape") as e:
        r.verify(other)
    assert "model.language_model.embed_tokens_per_layer.weight" in str(e.value)


def test_kv_shared_layers_may_carry_redundant_kv(tmp_path, ckpt, cfg, state):
    """Google's releases ship k_proj/v_proj/k_norm on KV-shared layers; transformers ignores them."""
    s = dict(state)
    src = "model.language_model.layers.0.self_attn"
    added = []
    for i in range(_shared_layer(cfg), cfg.text.num_hidden_layers):
        for part in ("k_proj", "v_proj", "k_norm"):
            name = f"model.language_model.layers.{i}.self_attn.{part}.weight"
            s[name] = state[f"{src}.{part}.weight"].clone()
            added.append(name)
    d = _write(tmp_path / "google_style", s, ckpt)
    with CheckpointReader(d) as r:
        assert r.verify(cfg).ignored == tuple(sorted(added))
    # ...but an extra k/v tensor on a layer that computes its own K/V is a real mismatch.
    s["model.language_model.layers.0.self_attn.v_norm.weight"] = torch.ones(cfg.text.head_dim)
    d = _write(tmp_path / "v_norm", s, ckpt)
    with CheckpointReader(d) as r, pytest.raises(CheckpointError, match=r"1 unexpected:\n.*layers\.0\.self_attn\.v_norm"):
        r.verify(cfg)


def test_tied_lm_head(tmp_path, ckpt, cfg, state):
    s = dict(state, **{LM_HEAD: state[EMBED].clone()})
    with CheckpointReader(_write(tmp_path / "same", s, ckpt)) as r:
        assert r.verify(cfg).ignored == (LM_HEAD,)
    s[LM_HEAD] = state[EMBED].clone()
    s[LM_HEAD][-1, 0] += 1.0  # the sample of rows includes the last one
    with CheckpointReader(_write(tmp_path / "differs", s, ckpt)) as r, \
            pytest.raises(CheckpointError, match="tie_word_embeddings"):
        r.verify(cfg)
    untied = dataclasses.replace(cfg, tie_word_embeddings=False)
    with CheckpointReader(ckpt) as r, pytest.raises(CheckpointError, match=r"1 missing:\n  lm_head\.weight"):
        r.verify(untied)


# ---------------------------------------------------------------- damaged files


def _header_len(path):
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.parametrize("damage,message", [
    (lambda b, n: b[:-100], "truncated"),  # a download cut short: the last tensor's bytes are missing
    (lambda b, n: b[: 8 + n // 2], "header claims"),
    (lambda b, n: b[:8] + b"{" * n + b[8 + n:], "not valid JSON"),
    (lambda b, n: b[:5], "too short"),
])
def test_damaged_safetensors_are_named(tmp_path, ckpt, damage, message):
    d = tmp_path / "damaged"
    shutil.copytree(ckpt, d)
    f = d / SINGLE_FILE
    f.write_bytes(damage(f.read_bytes(), _header_len(f)))
    with pytest.raises(CheckpointError, match=message) as e:
        CheckpointReader(d)
    assert str(f) in str(e.value)


def test_header_entry_inconsistent_with_its_bytes(tmp_path):
    header = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    f = tmp_path / "x.safetensors"
    f.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(CheckpointError, match=r"needs 16 bytes but data_offsets span 8"):
        read_header(f)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="neither model.safetensors nor"):
        CheckpointReader(tmp_path)
    save_file({"a": torch.zeros(1)}, tmp_path / "model-00001-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="restore the index file"):
        CheckpointReader(tmp_path)


# ---------------------------------------------------------------- sharded and bf16


def _shard(tmp_path, ckpt, state, n=3):
    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(ckpt / "config.json", d / "config.json")
    names = sorted(state)
    files = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for i, file in enumerate(files):
        part = {k: state[k] for k in names[i::n]}
        save_file(part, d / file, metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}
    (d / INDEX_FILE).write_text(json.dumps(index))
    return d, files, index


def test_sharded_checkpoint(tmp_path, ckpt, cfg, state):
    d, files, index = _shard(tmp_path, ckpt, state)
    for where in (d, d / INDEX_FILE):
        with CheckpointReader(where) as r:
            r.verify(cfg)
            assert len(r.files) == 3 and sorted(r.names()) == sorted(state)
            name = sorted(state)[4]
            assert r.info(name).file.name == index["weight_map"][name]
            assert torch.equal(r.tensor(name), state[name])


def test_sharded_index_problems(tmp_path, ckpt, state):
    d, files, index = _shard(tmp_path, ckpt, state)
    (d / files[1]).rename(d / "elsewhere.safetensors")
    with pytest.raises(CheckpointError, match=f"do not exist: \\['{files[1]}'\\]") as e:
        CheckpointReader(d)
    assert str(d / INDEX_FILE) in str(e.value)
    (d / "elsewhere.safetensors").rename(d / files[1])
    moved = sorted(state)[0]
    index["weight_map"][moved] = files[2]  # the index and the shards disagree
    (d / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="different exports"):
        CheckpointReader(d)
    (d / INDEX_FILE).write_text("{ not json")
    with pytest.raises(CheckpointError, match="not a valid safetensors index"):
        CheckpointReader(d)


def test_truncated_shard_is_named(tmp_path, ckpt, state):
    d, files, _ = _shard(tmp_path, ckpt, state)
    f = d / files[2]
    f.write_bytes(f.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="truncated") as e:
        CheckpointReader(d)
    assert str(f) in str(e.value)


def test_bf16_checkpoint(tmp_path, ckpt, cfg, state):
    bf = {k: v.to(torch.bfloat16) for k, v in state.items()}
    d = _write(tmp_path / "bf16", bf, ckpt)
    name = "model.language_model.layers.2.mlp.gate_proj.weight"
    with CheckpointReader(d) as r:
        r.verify(cfg)
        assert r.dtype(name) == "BF16"
        assert r.raw(name).dtype == torch.bfloat16
        t = r.tensor(name)
        assert t.dtype == torch.float32 and torch.equal(t, bf[name].float())  # bf16 -> f32 is exact
        a = r.numpy(name)
        assert str(a.dtype) == "float32" and (a == bf[name].float().numpy()).all()
        assert torch.equal(r.rows(name, 1, 3), bf[name][1:3].float())


def test_lookup_errors(ckpt):
    with CheckpointReader(ckpt) as r:
        assert "nope" not in r and EMBED in r
        with pytest.raises(CheckpointError, match="no tensor 'nope'"):
            r.tensor("nope")
        with pytest.raises(IndexError):
            r.rows(EMBED, 0, r.shape(EMBED)[0] + 1)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.bool, torch.uint8])
def test_integer_weight_dtypes_are_refused_by_name(tmp_path, ckpt, cfg, state, dtype):
    """A float weight stored as an integer type would be read bit for bit and build silently wrong."""
    s = dict(state)
    name = "model.language_model.layers.1.self_attn.q_proj.weight"
    s[name] = s[name].view(torch.int32).to(dtype) if dtype != torch.int32 else s[name].view(torch.int32)
    d = _write(tmp_path / "int", s, ckpt)
    with CheckpointReader(d) as r, pytest.raises(CheckpointError) as e:
        r.verify(cfg)
    assert "1 wrong dtype" in str(e.value) and name in str(e.value) and "BF16, F16, F32, F64" in str(e.value)
