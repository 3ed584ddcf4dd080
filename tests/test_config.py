"""Gemma 3n config: round trips against transformers' own config classes, derived KV-sharing
facts checked against transformers' `kv_sharing_modes`, and validation errors that name the
field and the file."""

from __future__ import annotations

import dataclasses
import json

import pytest
import transformers

from converters.gemma3n.config import FULL, SLIDING, Gemma3nConfig, TextConfig
from converters.gemma3n.config_fields import ConfigError
from converters.gemma3n.tower_config import AudioConfig, VisionConfig
from edge.errors import UserError

E2B_TEXT = dict(num_hidden_layers=30, intermediate_size=8192, num_kv_shared_layers=10)
HF_CONFIGS = {"E4B": {}, "E2B": {"text_config": E2B_TEXT}}
SECTIONS = (("text", "text_config", TextConfig), ("vision", "vision_config", VisionConfig),
            ("audio", "audio_config", AudioConfig))


def _as_json(v):
    return json.loads(json.dumps(v))  # tuples -> lists, for comparing with transformers' lists


def _hf(**kw) -> transformers.Gemma3nConfig:
    return transformers.Gemma3nConfig(**kw)


def _hf_from_ours(cfg: Gemma3nConfig) -> transformers.Gemma3nConfig:
    d = cfg.to_hf_dict()
    d.pop("model_type")
    return transformers.Gemma3nConfig(**d)


def _assert_same_fields(ours: Gemma3nConfig, hf: transformers.Gemma3nConfig) -> None:
    for attr, key, klass in SECTIONS:
        for f in dataclasses.fields(klass):
            assert _as_json(getattr(getattr(ours, attr), f.name)) == _as_json(getattr(getattr(hf, key), f.name)), \
                f"{key}.{f.name}"
    for f in dataclasses.fields(Gemma3nConfig):
        # architectures: ours names the class (a CausalLM is text-only); a bare HF config has None.
        if f.name not in ("text", "vision", "audio", "eos_token_id", "dtype", "architectures"):
            assert _as_json(getattr(ours, f.name)) == _as_json(getattr(hf, f.name)), f.name


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_round_trip_equals_transformers_in_every_field(name):
    hf = _hf(**HF_CONFIGS[name])
    ours = Gemma3nConfig.from_hf(hf.to_dict())
    _assert_same_fields(ours, hf)
    back = _hf_from_ours(ours)
    _assert_same_fields(ours, back)
    a, b = hf.to_dict(), back.to_dict()
    a.pop("architectures"), b.pop("architectures")  # ours names the class; a bare HF config has None
    assert a == b
    assert Gemma3nConfig.from_hf(ours.to_hf_dict()) == ours
    assert json.loads(json.dumps(ours.to_hf_dict())) == ours.to_hf_dict()  # JSON-safe as is


def test_causal_lm_config_is_text_only():
    """A Gemma3nForCausalLM config.json is the text section alone: read as a text-only model."""
    text = transformers.Gemma3nTextConfig(**{k: v for k, v in E2B_TEXT.items() if k != "model_type"}).to_dict()
    text["architectures"] = ["Gemma3nForCausalLM"]
    ours = Gemma3nConfig.from_hf(text)
    assert ours.causal_lm and ours.text.num_hidden_layers == 30
    assert not Gemma3nConfig.from_hf(_hf(text_config=E2B_TEXT).to_dict()).causal_lm


def test_reads_checkpoint_dir_and_config_path(tmp_path):
    hf = _hf(text_config=E2B_TEXT)
    hf.save_pretrained(tmp_path)  # writes config.json the way checkpoints carry it
    from_dir = Gemma3nConfig.from_hf(tmp_path)
    assert from_dir == Gemma3nConfig.from_hf(tmp_path / "config.json") == Gemma3nConfig.from_hf(hf)
    assert from_dir.text.num_hidden_layers == 30 and from_dir.text.intermediate_size == (8192,) * 30


def _google_style_text() -> dict:
    """A text_config as Google's 4.53-era config.json writes it: legacy RoPE keys, extra keys."""
    return dict(model_type="gemma3n_text", vocab_size=262400, hidden_size=2048, intermediate_size=8192,
                num_hidden_layers=30, num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                vocab_size_per_layer_input=262144, hidden_size_per_layer_input=256, altup_num_inputs=4,
                num_kv_shared_layers=10, laurel_rank=64, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                rope_scaling=None, query_pre_attn_scalar=256, altup_lr_multiplier=1.0, torch_dtype="bfloat16")


def _minimal(text=None) -> dict:
    hf = _hf().to_dict()
    return dict(model_type="gemma3n", architectures=["Gemma3nForConditionalGeneration"], torch_dtype="bfloat16",
                eos_token_id=[1, 106], text_config=text or _google_style_text(),
                vision_config=hf["vision_config"], audio_config=hf["audio_config"])


def test_legacy_fields_parse_like_transformers():
    raw = _minimal()
    ours = Gemma3nConfig.from_hf(raw)
    hf_kw = {k: v for k, v in raw.items() if k != "model_type"}
    hf = transformers.Gemma3nConfig(**json.loads(json.dumps(hf_kw)))
    _assert_same_fields(ours, hf)
    assert ours.text.rope_parameters == {SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
                                         FULL: {"rope_type": "default", "rope_theta": 1_000_000.0}}
    assert ours.dtype == "bfloat16" and ours.eos_token_id == (1, 106)
    assert ours.to_hf_dict()["eos_token_id"] == [1, 106]


@pytest.mark.parametrize("name,store,caches", [("E4B", {SLIDING: 18, FULL: 19}, 20),
                                               ("E2B", {SLIDING: 18, FULL: 19}, 20)])
def test_kv_sharing_facts(name, store, caches):
    hf = _hf(**HF_CONFIGS[name])
    t = Gemma3nConfig.from_hf(hf.to_dict()).text
    assert t.first_kv_shared_layer_idx == caches
    assert t.kv_store_layers == store
    assert t.cache_layers == tuple(range(caches))
    assert sum(t.is_sliding(i) for i in t.cache_layers) == 16  # 16 sliding + 4 full caches
    assert t.kv_store_layer(t.num_hidden_layers - 1) == 19 and t.kv_store_layer(caches) == 18
    assert t.kv_store_layer(7) == 7
    assert t.rope_theta(0) == 10_000.0 and t.rope_theta(4) == 1_000_000.0


@pytest.mark.parametrize("text", [E2B_TEXT, {}, dict(num_hidden_layers=12, num_kv_shared_layers=3,
                                                     intermediate_size=64),
                                  dict(num_hidden_layers=7, num_kv_shared_layers=0, intermediate_size=64),
                                  # full attention only before the shared region: HF still names its store
                                  dict(num_hidden_layers=7, num_kv_shared_layers=2, intermediate_size=64)])
def test_kv_store_layer_agrees_with_transformers(text):
    """transformers: a 'reuse' layer reads shared_kv_states[its type], written by the 'store' layer of that type."""
    hf_text = transformers.Gemma3nTextConfig(**text)
    modes = hf_text.kv_sharing_modes
    t = Gemma3nConfig.from_hf(_hf(text_config=text).to_dict()).text
    stores = {hf_text.layer_types[i]: i for i, m in enumerate(modes) if m == "store"}
    for i, mode in enumerate(modes):
        assert t.is_kv_shared(i) == (mode == "reuse")
        assert t.kv_store_layer(i) == (stores[hf_text.layer_types[i]] if mode == "reuse" else i)
    assert t.kv_store_layers == stores  # {} when nothing is shared
    assert t.cache_layers == tuple(i for i, m in enumerate(modes) if m != "reuse")


def test_intermediate_size_normalised_and_frozen():
    t = TextConfig(num_hidden_layers=30, intermediate_size=8192, num_kv_shared_layers=10)
    assert t.intermediate_size == (8192,) * 30 and len(t.layer_types) == 30
    assert t.activation_sparsity_pattern == (0.95,) * 10 + (0.0,) * 20
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.hidden_size = 1  # type: ignore[misc]


def test_tiny_text_config_matches_transformers_and_has_every_feature():
    t = TextConfig.tiny()
    hf = transformers.Gemma3nTextConfig(**t.to_hf_dict())
    for f in dataclasses.fields(TextConfig):
        assert _as_json(getattr(t, f.name)) == _as_json(getattr(hf, f.name)), f.name
    assert 0 < t.num_kv_shared_layers < t.num_hidden_layers
    assert set(t.layer_types[: t.first_kv_shared_layer_idx]) == {SLIDING, FULL}
    assert any(p > 0 for p in t.activation_sparsity_pattern) and any(p == 0 for p in t.activation_sparsity_pattern)
    stores = {hf.layer_types[i]: i for i, m in enumerate(hf.kv_sharing_modes) if m == "store"}
    assert t.kv_store_layers == stores


def _bad(mutate):
    raw = json.loads(json.dumps(_hf().to_dict()))
    mutate(raw)
    return raw


BAD = {
    "missing shape field": (lambda d: d["text_config"].pop("hidden_size"), "text_config.hidden_size", "missing"),
    "wrong type": (lambda d: d["text_config"].update(head_dim="256"), "text_config.head_dim", "integer"),
    "bool is not an int": (lambda d: d["audio_config"].update(hidden_size=True), "audio_config.hidden_size",
                           "integer"),
    "layer_types length": (lambda d: d["text_config"]["layer_types"].pop(), "text_config.layer_types", "35"),
    "intermediate_size length": (lambda d: d["text_config"]["intermediate_size"].pop(),
                                 "text_config.intermediate_size", "35"),
    "sparsity length": (lambda d: d["text_config"]["activation_sparsity_pattern"].append(0.0),
                        "text_config.activation_sparsity_pattern", "35"),
    "unknown layer type": (lambda d: d["text_config"]["layer_types"].__setitem__(3, "chunked_attention"),
                           "text_config.layer_types", "chunked_attention"),
    "all layers shared": (lambda d: d["text_config"].update(num_kv_shared_layers=35),
                          "text_config.num_kv_shared_layers", "35"),
    "shared type without store": (lambda d: d["text_config"].update(
        layer_types=["sliding_attention"] * 34 + ["full_attention"], num_kv_shared_layers=1),
        "text_config.num_kv_shared_layers", "full_attention"),
    "llama": (lambda d: d.update(model_type="llama", architectures=["LlamaForCausalLM"]), "model_type", "llama"),
    # A multimodal config mislabelled as a CausalLM's: read as a text section, which lacks its fields.
    "mislabelled text-only": (lambda d: d.update(model_type="gemma3n_text"), "text_config.vocab_size", "missing"),
    "foreign architecture": (lambda d: d.update(architectures=["LlamaForCausalLM"]), "architectures", "Llama"),
    "no vision": (lambda d: d.pop("vision_config"), "vision_config", "missing"),
    "sub model_type": (lambda d: d["audio_config"].update(model_type="whisper"), "audio_config.model_type",
                       "whisper"),
    "sscp pairs": (lambda d: d["audio_config"].update(sscp_conv_kernel_size=[3, 3]),
                   "audio_config.sscp_conv_kernel_size", "pairs"),
    "token outside vocab": (lambda d: d.update(image_token_id=300_000), "image_token_id", "300000"),
    "flat rope": (lambda d: d["text_config"].update(rope_parameters={"rope_type": "default", "rope_theta": 1.0}),
                  "text_config.rope_parameters", "layer type"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_validation_errors_name_field_and_file(tmp_path, case):
    mutate, field_name, detail = BAD[case]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_bad(mutate)))
    with pytest.raises(ConfigError) as e:
        Gemma3nConfig.from_hf(tmp_path)
    msg = str(e.value)
    assert str(path) in msg and field_name in msg and detail in msg, msg
    assert isinstance(e.value, UserError)


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        Gemma3nConfig.from_hf(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gemma3n", ')
    with pytest.raises(ConfigError, match="not valid JSON") as e:
        Gemma3nConfig.from_hf(tmp_path / "config.json")
    assert str(tmp_path / "config.json") in str(e.value)


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="text_config.num_kv_shared_layers"):
        TextConfig(num_hidden_layers=4, intermediate_size=8, num_kv_shared_layers=4)
    with pytest.raises(ConfigError, match="audio_config.hidden_size"):
        AudioConfig(hidden_size=30, conf_num_attention_heads=8)
