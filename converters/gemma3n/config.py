"""Gemma 3n configs: frozen dataclasses with the Hugging Face field names.

Mirrors `transformers` 5.23.0 `models/gemma3n/configuration_gemma3n.py` (`Gemma3nTextConfig`,
`Gemma3nVisionConfig`, `Gemma3nAudioConfig`, `Gemma3nConfig`): same names, same defaults (the
E4B model), lists as tuples. The towers' sections live in tower_config.py, the typed fields and
checks every section shares in config_fields.py. `Gemma3nConfig.from_hf()` reads a checkpoint's config.json with
type and consistency checks whose errors name the field and the file; `to_hf_dict()` writes a
dict that `transformers.Gemma3nConfig(**d)` and config.json accept.

Defaults versus errors: like transformers, a field config.json leaves out takes the HF default,
except the fields that fix tensor shapes (`_REQUIRED`): defaulting those to E4B's values would
turn a truncated config into a wall of shape mismatches far from the cause, and every config
written by transformers or Google states them.

Derived facts the exporter needs live here as properties (KV sharing, caches, RoPE per layer),
checked against `Gemma3nTextConfig.kv_sharing_modes` and `Gemma3nTextAttention`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from converters.gemma3n.config_fields import (
    ConfigError, _check_types, _f, _Invalid, _is_int, _is_num, _lists, _positive, _Section, _tuple,
)
from converters.gemma3n.tower_config import AudioConfig, VisionConfig

SLIDING = "sliding_attention"
FULL = "full_attention"
_LAYER_TYPES = (SLIDING, FULL)


def _default_layer_types(n: int) -> tuple[str, ...]:
    # HF rule: every 5th layer is global (full) attention, the rest sliding window.
    return tuple(FULL if (i + 1) % 5 == 0 else SLIDING for i in range(n))


def _default_sparsity(n: int) -> tuple[float, ...]:
    # HF rule: the first 10 layers use Gaussian top-k at 0.95 when there are more than 10 layers.
    k = 10 if n > 10 else 0
    return (0.95,) * k + (0.0,) * (n - k)


def _default_rope() -> dict[str, dict[str, Any]]:
    return {SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
            FULL: {"rope_type": "default", "rope_theta": 1_000_000.0}}


# ---------------------------------------------------------------- text


@dataclass(frozen=True)
class TextConfig(_Section):
    """`Gemma3nTextConfig`: the decoder with AltUp, LAuReL, per-layer embeddings and KV sharing."""

    model_type: ClassVar[str] = "gemma3n_text"

    # Rows of embed_tokens: text ids plus the vision and audio hard-token ranges (262144+128+128).
    vocab_size: int = _f(262_400, "int")
    # Width of the residual stream (each AltUp stream).
    hidden_size: int = _f(2048, "int")
    # FFN width per layer (HF accepts one int for all layers; normalised to a per-layer tuple).
    intermediate_size: tuple[int, ...] = _f(16_384, "ints")
    # Decoder layers.
    num_hidden_layers: int = _f(35, "int")
    # Query heads.
    num_attention_heads: int = _f(8, "int")
    # Key/value heads (grouped-query attention).
    num_key_value_heads: int = _f(2, "int")
    # Per-head width of q, k and v.
    head_dim: int = _f(256, "int")
    # FFN activation (gelu with the tanh approximation in every released model).
    hidden_activation: str = _f("gelu_pytorch_tanh", "str")
    # Longest position the model was trained for.
    max_position_embeddings: int = _f(32_768, "int")
    # Std of the random init (unused by export; kept for round trips).
    initializer_range: float = _f(0.02, "num")
    # Epsilon of every RMSNorm in the decoder.
    rms_norm_eps: float = _f(1e-6, "num")
    # Whether generate() keeps a KV cache (unused by export).
    use_cache: bool = _f(True, "bool")
    # Padding token id (embedding row kept at zero in training).
    pad_token_id: int | None = _f(0, "int?")
    # End-of-sequence id(s).
    eos_token_id: int | tuple[int, ...] | None = _f(1, "int|ints?")
    # Beginning-of-sequence id.
    bos_token_id: int | None = _f(2, "int?")
    # lm_head shares embed_tokens' weight (the multimodal model reads the top-level flag).
    tie_word_embeddings: bool = _f(True, "bool")
    # RoPE per layer type: {"sliding_attention": {"rope_type", "rope_theta", …}, "full_attention": …}.
    rope_parameters: dict[str, dict[str, Any]] = _f(_default_rope(), "dict?")
    # Bias on q/k/v/o projections (false in every released model).
    attention_bias: bool = _f(False, "bool")
    # Attention dropout in training (unused by export).
    attention_dropout: float = _f(0.0, "num")
    # Sliding-window length of local layers (a query sees itself and W-1 past tokens).
    sliding_window: int = _f(512, "int")
    # "sliding_attention" or "full_attention" per layer.
    layer_types: tuple[str, ...] = _f(None, "strs")  # None: HF's every-5th-is-full rule
    # Logits become cap·tanh(logits/cap).
    final_logit_softcapping: float = _f(30.0, "num")
    # Rows of the per-layer-embedding (PLE) table; ids at or above it use row 0.
    vocab_size_per_layer_input: int = _f(262_144, "int")
    # Width of one layer's slice of the PLE table.
    hidden_size_per_layer_input: int = _f(256, "int")
    # AltUp stream the layer computes on (the others are predicted and corrected).
    altup_active_idx: int = _f(0, "int")
    # Clip of AltUp coefficient weights in training (unused at inference).
    altup_coef_clip: float = _f(120.0, "num")
    # Scale the corrected active stream by correct_output_scale before the PLE gate.
    altup_correct_scale: bool = _f(True, "bool")
    # Number of AltUp streams.
    altup_num_inputs: int = _f(4, "int")
    # The last N layers reuse the K/V of the last earlier layer of their type.
    num_kv_shared_layers: int = _f(15, "int")
    # Rank of the LAuReL low-rank residual.
    laurel_rank: int = _f(64, "int")
    # Gaussian top-k target sparsity per layer (0 = dense FFN).
    activation_sparsity_pattern: tuple[float, ...] = _f(None, "nums")  # None: HF's first-10-sparse rule

    def __post_init__(self) -> None:
        # Accept what HF accepts (an int FFN width, lists, None for the rule-based defaults).
        n = self.num_hidden_layers
        if not _is_int(n) or n <= 0:
            raise _Invalid("text_config.num_hidden_layers", f"must be a positive integer, got {n!r}")
        fix = {"intermediate_size": (self.intermediate_size,) * n if _is_int(self.intermediate_size)
               else _tuple(self.intermediate_size),
               "layer_types": _default_layer_types(n) if self.layer_types is None else _tuple(self.layer_types),
               "activation_sparsity_pattern": _default_sparsity(n) if self.activation_sparsity_pattern is None
               else _tuple(self.activation_sparsity_pattern),
               "eos_token_id": _tuple(self.eos_token_id),
               "rope_parameters": _default_rope() if self.rope_parameters is None
               else copy.deepcopy(dict(self.rope_parameters))}
        for k, v in fix.items():
            object.__setattr__(self, k, v)
        self._validate()

    def _validate(self) -> None:
        s = "text_config"
        _check_types(self, s)
        _positive(self, s, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "sliding_window", "vocab_size_per_layer_input",
                  "hidden_size_per_layer_input", "altup_num_inputs", "laurel_rank")
        n = self.num_hidden_layers
        for name in ("intermediate_size", "layer_types", "activation_sparsity_pattern"):
            if len(getattr(self, name)) != n:
                raise _Invalid(f"{s}.{name}", f"has {len(getattr(self, name))} entries but num_hidden_layers is {n}: "
                               "give one value per layer")
        if any(w <= 0 for w in self.intermediate_size):
            raise _Invalid(f"{s}.intermediate_size", f"every width must be positive, got {self.intermediate_size}")
        bad = sorted(set(self.layer_types) - set(_LAYER_TYPES))
        if bad:
            raise _Invalid(f"{s}.layer_types", f"unknown layer type(s) {bad}; expected {list(_LAYER_TYPES)}")
        if any(not 0.0 <= p < 1.0 for p in self.activation_sparsity_pattern):
            raise _Invalid(f"{s}.activation_sparsity_pattern", "every value must be in [0, 1)")
        if not 0 <= self.num_kv_shared_layers < n:
            raise _Invalid(f"{s}.num_kv_shared_layers", f"= {self.num_kv_shared_layers} must be in [0, "
                           f"num_hidden_layers={n}): at least one layer must compute its own K/V")
        first = self.first_kv_shared_layer_idx
        missing = sorted(set(self.layer_types[first:]) - set(self.layer_types[:first]))
        if missing:
            raise _Invalid(f"{s}.num_kv_shared_layers", f"the shared layers {first}..{n - 1} use {missing} but no "
                           "earlier layer of that type stores K/V for them")
        if self.hidden_size % self.num_attention_heads:  # transformers refuses this too
            raise _Invalid(f"{s}.hidden_size", f"{self.hidden_size} is not a multiple of num_attention_heads "
                           f"({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise _Invalid(f"{s}.num_key_value_heads", f"{self.num_key_value_heads} does not divide "
                           f"num_attention_heads ({self.num_attention_heads})")
        if not 0 <= self.altup_active_idx < self.altup_num_inputs:
            raise _Invalid(f"{s}.altup_active_idx", f"must be in [0, altup_num_inputs={self.altup_num_inputs})")
        if self.vocab_size_per_layer_input > self.vocab_size:
            raise _Invalid(f"{s}.vocab_size_per_layer_input", f"{self.vocab_size_per_layer_input} exceeds "
                           f"vocab_size ({self.vocab_size})")
        for t in sorted(set(self.layer_types)):
            p = self.rope_parameters.get(t)
            if not isinstance(p, dict) or not _is_num(p.get("rope_theta")):
                raise _Invalid(f"{s}.rope_parameters.{t}", "needs an object with a numeric rope_theta")

    @classmethod
    def tiny(cls, **overrides: Any) -> TextConfig:
        """A few-layer decoder with every feature (sparse + dense FFN, both layer types, KV sharing).

        Vocab 512 = 256 text + 128 vision + 128 audio, mirroring the real id layout.
        """
        n = overrides.pop("num_hidden_layers", 6)
        base = dict(vocab_size=512, vocab_size_per_layer_input=256, hidden_size=64, num_hidden_layers=n,
                    intermediate_size=(128,) * n, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                    hidden_size_per_layer_input=16, laurel_rank=8, sliding_window=8, max_position_embeddings=256,
                    layer_types=tuple(FULL if (i + 1) % 3 == 0 else SLIDING for i in range(n)),
                    activation_sparsity_pattern=tuple(0.95 if i < 2 else 0.0 for i in range(n)),
                    num_kv_shared_layers=max(0, n - 4))
        base.update(overrides)
        return cls(**base)

    # ---------------------------------------------------------------- derived facts

    @property
    def first_kv_shared_layer_idx(self) -> int:
        """First layer that reuses another layer's K/V (= num_hidden_layers when none do)."""
        return self.num_hidden_layers - self.num_kv_shared_layers

    def is_sliding(self, i: int) -> bool:
        return self.layer_types[self._layer(i)] == SLIDING

    def is_kv_shared(self, i: int) -> bool:
        """True when layer i has no k/v projections and reads another layer's K/V."""
        return self._layer(i) >= self.first_kv_shared_layer_idx

    def kv_store_layer(self, i: int) -> int:
        """The layer whose K/V layer i attends to: itself, or for a shared layer the last layer of
        its type before the shared region (HF `kv_sharing_modes` "store")."""
        if self._layer(i) < self.first_kv_shared_layer_idx:
            return i
        return self.kv_store_layers[self.layer_types[i]]

    @property
    def kv_store_layers(self) -> dict[str, int]:
        """Layer type -> the last layer of that type before the shared region, whose K/V the shared
        layers of that type reuse (HF's "store" layers); empty without sharing."""
        if self.num_kv_shared_layers == 0:
            return {}
        first = self.first_kv_shared_layer_idx
        return {t: max(j for j in range(first) if self.layer_types[j] == t) for t in sorted(set(self.layer_types))}

    @property
    def cache_layers(self) -> tuple[int, ...]:
        """Layers that own a KV cache, in order (every layer before the shared region)."""
        return tuple(range(self.first_kv_shared_layer_idx))

    def rope_theta(self, i: int) -> float:
        return float(self.rope_parameters[self.layer_types[self._layer(i)]]["rope_theta"])

    def _layer(self, i: int) -> int:
        if not 0 <= i < self.num_hidden_layers:
            raise IndexError(f"layer {i} out of range [0, {self.num_hidden_layers})")
        return i


# ---------------------------------------------------------------- the multimodal model

# Fields whose HF default we refuse to assume: they fix tensor shapes (see the module docstring).
_REQUIRED = {
    "text_config": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "vocab_size_per_layer_input",
                    "hidden_size_per_layer_input", "altup_num_inputs", "num_kv_shared_layers", "laurel_rank"),
    "vision_config": ("architecture", "hidden_size", "vocab_size"),
    "audio_config": ("vocab_size", "input_feat_size", "hidden_size", "conf_num_attention_heads",
                     "conf_num_hidden_layers", "conf_conv_kernel_size", "sscp_conv_channel_size",
                     "sscp_conv_kernel_size", "sscp_conv_stride_size"),
}
_SUB_MODEL_TYPES = {"text_config": TextConfig.model_type, "vision_config": VisionConfig.model_type,
                    "audio_config": AudioConfig.model_type}


def _token_id(default: int) -> Any:
    """An int field naming a special token: __post_init__ checks every such id against the vocabulary."""
    return field(default=default, metadata={"kind": "int", "token_id": True})


@dataclass(frozen=True)
class Gemma3nConfig:
    """`Gemma3nConfig`: the three towers plus the special token ids that glue them together."""

    # Decoder.
    text: TextConfig = field(default_factory=TextConfig)
    # Image encoder.
    vision: VisionConfig = field(default_factory=VisionConfig)
    # Audio encoder.
    audio: AudioConfig = field(default_factory=AudioConfig)
    # Soft tokens one audio clip becomes (30 s at 6.25 tokens/s).
    audio_soft_tokens_per_image: int = _f(188, "int")
    # Soft tokens one image becomes (16x16 feature map).
    vision_soft_tokens_per_image: int = _f(256, "int")
    # <start_of_image>, placed before an image's soft tokens.
    boi_token_id: int = _token_id(255_999)
    # <end_of_image>, placed after them.
    eoi_token_id: int = _token_id(262_144)
    # Placeholder id replaced by image soft tokens.
    image_token_id: int = _token_id(262_145)
    # <start_of_audio>.
    boa_token_id: int = _token_id(256_000)
    # <end_of_audio>.
    eoa_token_id: int = _token_id(262_272)
    # Placeholder id replaced by audio soft tokens.
    audio_token_id: int = _token_id(262_273)
    # Std of the random init (unused by export).
    initializer_range: float = _f(0.02, "num")
    # lm_head shares the text embedding (the flag Gemma3nForConditionalGeneration reads).
    tie_word_embeddings: bool = _f(True, "bool")
    # Whether generate() keeps a KV cache (unused by export).
    use_cache: bool = _f(True, "bool")
    # Stop ids of the top level (instruction-tuned configs list <end_of_turn> here); None if absent.
    eos_token_id: int | tuple[int, ...] | None = _f(None, "int|ints?")
    # Storage dtype the checkpoint declares ("bfloat16"...); None if absent.
    dtype: str | None = field(default=None)
    # The checkpoint's classes (config.json "architectures"); Gemma3nForCausalLM is text-only.
    architectures: tuple[str, ...] = field(default=("Gemma3nForConditionalGeneration",))

    @property
    def causal_lm(self) -> bool:
        """A text-only Gemma3nForCausalLM checkpoint (its towers' configs are the defaults, unused)."""
        return self.architectures == ("Gemma3nForCausalLM",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "eos_token_id", _tuple(self.eos_token_id))
        _check_types(self, "")
        if self.causal_lm:
            return  # no towers, so no image/audio ids to place in the vocabulary
        v = self.text.vocab_size
        for name, sub in (("vision_config", self.vision), ("audio_config", self.audio)):
            if sub.vocab_offset < 0 or sub.vocab_offset + sub.vocab_size > v:
                raise _Invalid(f"{name}.vocab_offset", f"ids [{sub.vocab_offset}, {sub.vocab_offset + sub.vocab_size}) "
                               f"fall outside text_config.vocab_size ({v})")
        for name in (f.name for f in dataclasses.fields(self) if f.metadata.get("token_id")):
            if not 0 <= getattr(self, name) < v:
                raise _Invalid(name, f"= {getattr(self, name)} is outside text_config.vocab_size ({v})")

    # ---------------------------------------------------------------- reading

    @classmethod
    def from_hf(cls, source: str | Path | Mapping[str, Any] | Any) -> Gemma3nConfig:
        """Read a checkpoint dir, a config.json path, a config dict, or a transformers config object."""
        raw, where = _load(source)
        try:
            return cls._from_dict(raw)
        except _Invalid as e:
            raise ConfigError(f"{where}: {e}. {e.fix}") from None

    @classmethod
    def _from_dict(cls, raw: Mapping[str, Any]) -> Gemma3nConfig:
        mt = raw.get("model_type")
        if mt == "gemma3n_text":  # a text-only Gemma3nForCausalLM: its config is the text section
            raw = {"model_type": "gemma3n", "architectures": raw.get("architectures") or ["Gemma3nForCausalLM"],
                   "text_config": raw, "vision_config": None, "audio_config": None,
                   **{k: raw[k] for k in ("tie_word_embeddings", "dtype", "torch_dtype") if k in raw}}
        elif mt != "gemma3n":
            raise _Invalid("model_type", f"is {json.dumps(mt)}, expected \"gemma3n\" (Gemma3nForConditionalGeneration) "
                           "or \"gemma3n_text\" (Gemma3nForCausalLM): this tool converts Gemma 3n checkpoints only",
                           "Point at a Gemma 3n checkpoint.")
        archs = raw.get("architectures")
        if archs is not None and (not isinstance(archs, list)
                                  or not all(isinstance(a, str) and a.startswith("Gemma3n") for a in archs)):
            raise _Invalid("architectures", f"is {json.dumps(archs)}, expected Gemma3n classes "
                           "(Gemma3nForConditionalGeneration)", "Point at a Gemma 3n checkpoint.")
        subs = {}
        for key, klass in (("text_config", TextConfig), ("vision_config", VisionConfig),
                           ("audio_config", AudioConfig)):
            sub = raw.get(key)
            if sub is None and key in raw:  # a CausalLM's absent towers: the defaults, never built
                subs[key] = klass()
                continue
            if not isinstance(sub, Mapping):
                raise _Invalid(key, "is missing (or not an object)" if sub is None else "must be an object")
            if sub.get("model_type", _SUB_MODEL_TYPES[key]) != _SUB_MODEL_TYPES[key]:
                raise _Invalid(f"{key}.model_type", f"is {json.dumps(sub.get('model_type'))}, expected "
                               f"\"{_SUB_MODEL_TYPES[key]}\"")
            kwargs = _section_kwargs(klass, sub, key)
            if key == "text_config":
                kwargs["rope_parameters"] = _rope_from_hf(sub)
            subs[key] = klass(**kwargs)
        top = _section_kwargs(cls, raw, "", skip={"text", "vision", "audio", "dtype", "architectures"})
        dtype = raw.get("dtype", raw.get("torch_dtype"))
        return cls(text=subs["text_config"], vision=subs["vision_config"], audio=subs["audio_config"],
                   dtype=None if dtype is None else str(dtype).removeprefix("torch."),
                   **({"architectures": tuple(archs)} if archs else {}), **top)

    # ---------------------------------------------------------------- writing

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json-shaped dict (lists, model_type keys) that transformers.Gemma3nConfig(**d) accepts."""
        out: dict[str, Any] = {"architectures": ["Gemma3nForConditionalGeneration"], "model_type": "gemma3n"}
        for key, sub in (("text_config", self.text), ("vision_config", self.vision), ("audio_config", self.audio)):
            out[key] = sub.to_hf_dict()
        for f in dataclasses.fields(self):
            if f.name in ("text", "vision", "audio", "architectures"):
                continue
            value = getattr(self, f.name)
            if f.name in ("eos_token_id", "dtype") and value is None:
                continue  # absent in the source: leave transformers' own default
            out[f.name] = _lists(value)
        return out

    def to_transformers(self) -> Any:
        """The equivalent `transformers.Gemma3nConfig` (imports transformers)."""
        from transformers import Gemma3nConfig as HFGemma3nConfig

        d = self.to_hf_dict()
        d.pop("model_type")
        return HFGemma3nConfig(**d)


# ---------------------------------------------------------------- helpers for from_hf


def _load(source: Any) -> tuple[Mapping[str, Any], str]:
    if isinstance(source, Mapping):
        return source, "<config dict>"
    if hasattr(source, "to_dict") and not isinstance(source, (str, Path)):
        return source.to_dict(), f"<{type(source).__name__} object>"
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file. Point at a Hugging Face checkpoint directory "
                          "(with config.json) or at the config.json itself.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e}). Re-download or re-export the checkpoint.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object, got {type(raw).__name__}.")
    return raw, str(path)


def _section_kwargs(klass: type, raw: Mapping[str, Any], section: str, skip: set[str] = frozenset()) -> dict:
    """Constructor kwargs for klass from one config.json section: required fields checked, lists to tuples."""
    required = _REQUIRED.get(section, ())
    out: dict[str, Any] = {}
    for f in dataclasses.fields(klass):
        if f.name in skip or f.name == "rope_parameters":
            continue
        if f.name not in raw:
            if f.name in required:
                raise _Invalid(f"{section}.{f.name}", "is missing; it fixes tensor shapes, so no default is assumed")
            continue
        value = raw[f.name]
        out[f.name] = _tuple(value)
    return out


def _rope_from_hf(sub: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """rope_parameters as transformers 5 builds it, also from legacy rope_theta / rope_local_base_freq / rope_scaling."""
    given = sub.get("rope_parameters")
    if given is not None and not isinstance(given, dict):
        raise _Invalid("text_config.rope_parameters", "must be an object keyed by layer type")
    rope = copy.deepcopy(given) if given else {}
    extra = sorted(set(rope) - set(_LAYER_TYPES))
    if extra:
        raise _Invalid("text_config.rope_parameters", f"must be keyed by layer type {list(_LAYER_TYPES)}, "
                       f"got keys {extra}")
    if isinstance(sub.get("rope_scaling"), dict):  # legacy: scaling applies to the global layers
        rope.setdefault(FULL, {}).update(sub["rope_scaling"])
    theta = {FULL: sub.get("rope_theta", 1_000_000.0), SLIDING: sub.get("rope_local_base_freq", 10_000.0)}
    for t in _LAYER_TYPES:
        p = rope.get(t)
        if p is None:
            p = rope[t] = {}
        if not isinstance(p, dict):
            raise _Invalid(f"text_config.rope_parameters.{t}", "must be an object")
        p.setdefault("rope_type", p.get("type", "default"))
        p.setdefault("rope_theta", theta[t])
    return rope
