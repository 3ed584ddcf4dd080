"""MatFormer slicing: E4B -> E2B and every published mix-n-match size, applied while weights stream.

Gemma 3n E4B nests smaller models (MatFormer): a slice keeps a subset of the decoder layers and,
in each kept layer, the first d units of the FFN. A `SliceSpec` (matformer_spec.py) says which
(Google's published table, `data/matformer_slicing_configs.csv`, or a JSON file with the same
fields); `plan_slice` checks it against a source config and rewrites the config the way Google's
MatFormer Lab does, plus `layer_types` (the Lab leaves it alone, which only works for slices that
drop whole 5-layer blocks):

- layers dropped and renumbered; `intermediate_size`, `layer_types`, `activation_sparsity_pattern`
  keep the kept layers' entries; `num_kv_shared_layers` = kept layers in the shared region;
- gate_proj/up_proj keep their first d rows, down_proj its first d columns (truncation, not
  masking: the Gaussian top-k statistics of sparse layers are over the kept width);
- the PLE table `embed_tokens_per_layer` (V, L*P) and `per_layer_model_projection` (L*P, H) keep
  the kept layers' P-blocks (`per_layer_projection_norm` is shared by all layers: unchanged).

KV sharing: layers from L - num_kv_shared_layers on reuse the K/V of the last earlier layer of
their type (the "store" layers, 18/19 in E4B). Keeping the store layers keeps every reuse edge,
so skipping one is refused; skipping shared layers only shrinks the shared region.

`SlicedCheckpoint(reader, spec)` is a lazy view with the `CheckpointReader` interface (names,
shape, dtype, tensor, raw, rows) over the source files: nothing is copied until a tensor or a
row block is asked for. `converters.matformer_export.export_sliced_hf` writes it as a Hugging Face
checkpoint directory, tensor by tensor, atomically. `effective_params` counts parameters as
Google's table does.
Mirrors transformers 5.23 `models/gemma3n` (`Gemma3nTextModel`, `kv_sharing_modes`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converters.checkpoint import CheckpointReader, TensorNames
from converters.gemma3n.config import Gemma3nConfig, TextConfig
from converters.gemma3n.config_fields import ConfigError
from converters.matformer_spec import SliceError, SliceSpec, load_spec

if TYPE_CHECKING:
    import torch

PRESETS_CSV = "matformer_slicing_configs.csv"
PLE_TABLE = "model.language_model.embed_tokens_per_layer.weight"
PLE_PROJECTION = "model.language_model.per_layer_model_projection.weight"
_LAYER = re.compile(r"^model\.language_model\.layers\.(\d+)\.(.+)$")


# ---------------------------------------------------------------- published presets


def _short_names(full: list[str]) -> list[str]:
    """"E2B (official)" -> "E2B", "E1.96B layer-level" -> "E1.96B"; a size shared by two rows keeps its
    qualifier ("E2.98B-layer", "E2.98B-block") so every name is unambiguous."""
    heads = [n.split()[0] for n in full]
    out = []
    for n, head in zip(full, heads):
        if heads.count(head) == 1:
            out.append(head)
        else:
            qual = n[len(head):].strip(" ()").split()[0].removesuffix("-level")
            out.append(f"{head}-{qual}")
    if len(set(out)) != len(out):
        raise AssertionError(f"preset names collide: {out}")
    return out


@lru_cache(maxsize=1)
def presets() -> dict[str, SliceSpec]:
    """Google's published slicing configs by short name, in table order (packaged copy of the CSV)."""
    text = resources.files("converters").joinpath("data", PRESETS_CSV).read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    out = {}
    for short, row in zip(_short_names([r["name"] for r in rows]), rows):
        spec = SliceSpec(ffn_hidden_dims=tuple(int(x) for x in row["ffn_hidden_dims"].split()),
                         layers_skipped=tuple(int(x) for x in row["layers_skipped"].split()), name=short,
                         effective_params_b=float(row["effective_params_b"]),
                         mmlu_pt_percent=float(row["mmlu_pt_percent"]))
        if spec.num_layers != int(row["num_layers"]):
            raise AssertionError(f"{PRESETS_CSV}: row {row['name']!r} has num_layers {row['num_layers']} "
                                 f"but {spec.num_layers} widths")
        out[short] = spec
    return out


def preset(name: str) -> SliceSpec:
    """A published preset by short name (case-insensitive), e.g. "E2B", "E2.69B", "E2.98B-block"."""
    table = presets()
    by_lower = {k.lower(): v for k, v in table.items()}
    spec = by_lower.get(name.strip().lower())
    if spec is None:
        raise SliceError(f"unknown MatFormer slice {name!r}: choose a published preset ({', '.join(table)}) "
                         "or pass a JSON file with ffn_hidden_dims and layers_skipped")
    return spec


def resolve_slice(value: str | Path | SliceSpec) -> SliceSpec:
    """`--slice` argument: a SliceSpec, a preset name, or a path to a JSON spec."""
    if isinstance(value, SliceSpec):
        return value
    if isinstance(value, Path) or str(value).endswith(".json") or Path(str(value)).is_file():
        return load_spec(value)
    return preset(str(value))


# ---------------------------------------------------------------- validation and the sliced config


@dataclass(frozen=True)
class SlicePlan:
    """A spec checked against a source decoder config, with the sliced config it produces."""

    spec: SliceSpec
    source: TextConfig
    text: TextConfig
    layers_kept: tuple[int, ...]

    def new_index(self, source_layer: int) -> int | None:
        """The sliced index of a source layer, or None when it is skipped."""
        try:
            return self.layers_kept.index(source_layer)
        except ValueError:
            return None


def _text(config: Gemma3nConfig | TextConfig) -> TextConfig:
    return config.text if isinstance(config, Gemma3nConfig) else config


def plan_slice(spec: SliceSpec, config: Gemma3nConfig | TextConfig) -> SlicePlan:
    """Check `spec` against the source config and rewrite the config; each violation a SliceError."""
    src = _text(config)
    n, where = src.num_hidden_layers, f"slice {spec.name!r}"
    other = (f" (the spec is for a {spec.source_num_layers}-layer model: {spec.num_layers} widths + "
             f"{len(spec.layers_skipped)} skipped)") if spec.source_num_layers != n else ""
    out_of_range = [i for i in spec.layers_skipped if i >= n]
    if out_of_range:
        raise SliceError(f"{where}: layers_skipped {out_of_range} out of range: the checkpoint has {n} layers "
                         f"(0..{n - 1}){other}")
    if len(spec.layers_skipped) >= n:
        raise SliceError(f"{where}: skips all {n} layers; keep at least one")
    kept_count = n - len(spec.layers_skipped)
    if spec.num_layers != kept_count:
        raise SliceError(f"{where}: {spec.num_layers} FFN widths for {kept_count} kept layers ({n} layers, "
                         f"{len(spec.layers_skipped)} skipped): give exactly one width per kept layer{other}")
    kept = spec.layers_kept
    too_wide = [f"layer {i} (ffn_hidden_dims[{j}]): {d} > {src.intermediate_size[i]}"
                for j, (i, d) in enumerate(zip(kept, spec.ffn_hidden_dims)) if d > src.intermediate_size[i]]
    if too_wide:
        raise SliceError(f"{where}: FFN widths exceed the checkpoint's: {'; '.join(too_wide)}. A slice keeps a "
                         "prefix of each FFN, so a width can be at most the source layer's")
    stores = {i: t for t, i in src.kv_store_layers.items()}
    skipped_stores = [i for i in spec.layers_skipped if i in stores]
    if skipped_stores:
        first = src.first_kv_shared_layer_idx
        what = ", ".join(f"{i} ({stores[i]})" for i in skipped_stores)
        raise SliceError(f"{where}: cannot skip KV store layer(s) {what}: layers {first}..{n - 1} reuse the K/V "
                         f"they compute, so skipping one leaves its layer type without a store. Keep "
                         f"{sorted(stores)}")
    first = src.first_kv_shared_layer_idx
    try:
        text = dataclasses.replace(
            src, num_hidden_layers=len(kept), intermediate_size=spec.ffn_hidden_dims,
            layer_types=tuple(src.layer_types[i] for i in kept),
            activation_sparsity_pattern=tuple(src.activation_sparsity_pattern[i] for i in kept),
            num_kv_shared_layers=sum(1 for i in kept if i >= first))
    except ConfigError as e:
        raise SliceError(f"{where}: the sliced config is invalid: {e}") from None
    _check_sharing(src, text, kept, where)
    return SlicePlan(spec, src, text, kept)


def _check_sharing(src: TextConfig, text: TextConfig, kept: tuple[int, ...], where: str) -> None:
    """Every kept layer must read the K/V it read before: its own, or its source store layer's."""
    for j, i in enumerate(kept):
        if src.is_kv_shared(i) != text.is_kv_shared(j) or kept[text.kv_store_layer(j)] != src.kv_store_layer(i):
            raise SliceError(f"{where}: breaks KV sharing: source layer {i} (now {j}) would read the K/V of source "
                             f"layer {kept[text.kv_store_layer(j)]} instead of {src.kv_store_layer(i)}")


def slice_config(config: Gemma3nConfig, spec: SliceSpec | str | Path) -> Gemma3nConfig:
    """The full sliced config (towers unchanged)."""
    return dataclasses.replace(config, text=plan_slice(resolve_slice(spec), config).text)


def sliced_config_dict(raw: Mapping[str, Any], plan: SlicePlan) -> dict[str, Any]:
    """A source config.json dict with text_config rewritten for the slice; every other field kept as is."""
    out = json.loads(json.dumps(raw))
    t = plan.text
    out["text_config"].update(num_hidden_layers=t.num_hidden_layers, intermediate_size=list(t.intermediate_size),
                              layer_types=list(t.layer_types), num_kv_shared_layers=t.num_kv_shared_layers,
                              activation_sparsity_pattern=list(t.activation_sparsity_pattern))
    return out


# ---------------------------------------------------------------- effective parameters


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts of a Gemma 3n decoder (vision and audio towers not included)."""

    # Google's "effective parameters" (MatFormer Lab, the slicing table): the text model without its
    # embedding tables (embed_tokens, PLE), counting k/v on KV-shared layers as transformers 4.53 did.
    effective: int
    # Decoder layers as transformers 5 builds them (no k/v on KV-shared layers).
    decoder_layers: int
    # The k_proj/v_proj/k_norm weights Google's count includes on KV-shared layers (unused by the model).
    shared_kv: int
    # per_layer_model_projection, its norm, AltUp (un)embedding projections, final norm.
    text_other: int
    # Token embedding (tied lm_head) and the PLE table: excluded from `effective`.
    embed_tokens: int
    ple_table: int


def param_count(config: Gemma3nConfig | TextConfig) -> ParamCount:
    """Count the decoder's parameters from its config alone (no weights, no torch)."""
    t = _text(config)
    h, p, n, hd = t.hidden_size, t.hidden_size_per_layer_input, t.altup_num_inputs, t.head_dim
    bias = t.attention_bias
    q_o = 2 * h * t.num_attention_heads * hd + hd + (t.num_attention_heads * hd + h if bias else 0)  # + q_norm
    kv = 2 * h * t.num_key_value_heads * hd + hd + (2 * t.num_key_value_heads * hd if bias else 0)  # + k_norm
    fixed = (4 * h  # input, post-attention, pre-/post-FFN norms
             + h + n * n + n ** 3 + h * n + h  # AltUp: output scale, correction, prediction, router, router norm
             + 2 * h * t.laurel_rank + h  # LAuReL left/right + norm
             + 2 * h * p + h)  # PLE gate, projection, norm
    layers = sum(q_o + fixed + 3 * h * d for d in t.intermediate_size) + kv * t.first_kv_shared_layer_idx
    shared_kv = kv * t.num_kv_shared_layers
    other = h * t.num_hidden_layers * p + p + 2 * (n - 1) * h * h + h
    return ParamCount(effective=layers + shared_kv + other, decoder_layers=layers, shared_kv=shared_kv,
                      text_other=other, embed_tokens=t.vocab_size * h,
                      ple_table=t.vocab_size_per_layer_input * t.num_hidden_layers * p)


def effective_params(config: Gemma3nConfig | TextConfig) -> int:
    """Effective parameters as Google's slicing table counts them (E4B 3.98B, E2B 1.91B)."""
    return param_count(config).effective


# ---------------------------------------------------------------- the streaming view


@dataclass(frozen=True)
class _Source:
    """How one sliced tensor is read: from which source tensor, and what is kept of it."""

    name: str
    kind: str  # "same" | "rows" (first d rows) | "cols" (first d columns) | "ple" | "ple_projection"
    width: int = 0  # d for "rows"/"cols"
    shape: tuple[int, ...] = ()


def _torch_dtype(st_dtype: str) -> torch.dtype:
    import torch

    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}.get(
        st_dtype, torch.float32)  # non-float tensors ignore the dtype argument


class SlicedCheckpoint(TensorNames):
    """A sliced model's tensors, read lazily from the source checkpoint (CheckpointReader interface).

    `reader`: a CheckpointReader or a checkpoint path; `spec`: a SliceSpec, preset name or JSON path;
    `config`: the source config (read from the checkpoint directory when None). `.config` is the
    sliced Gemma3nConfig, `.plan` the checked plan. Names are the sliced model's canonical names.
    """

    def __init__(self, reader: CheckpointReader | str | Path, spec: SliceSpec | str | Path,
                 config: Gemma3nConfig | None = None):
        self._owns_reader = isinstance(reader, (str, Path))  # else any reader-like (e.g. AdaptedCheckpoint)
        self.reader = CheckpointReader(reader) if self._owns_reader else reader
        path = self.reader.path
        self.source_config = config if config is not None else Gemma3nConfig.from_hf(
            path if path.is_dir() else path.parent)
        self.spec = resolve_slice(spec)
        self.plan = plan_slice(self.spec, self.source_config)
        self.config = dataclasses.replace(self.source_config, text=self.plan.text)
        self._map = self._build_map()

    def _build_map(self) -> dict[str, _Source]:
        plan, p = self.plan, self.source_config.text.hidden_size_per_layer_input
        out: dict[str, _Source] = {}
        for name in self.reader.names():
            shape = self.reader.shape(name)
            m = _LAYER.match(name)
            if m:
                j = plan.new_index(int(m.group(1)))
                if j is None:
                    continue
                rest, d = m.group(2), plan.text.intermediate_size[j]
                new = f"model.language_model.layers.{j}.{rest}"
                if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                    out[new] = _Source(name, "rows", d, (d, *shape[1:]))
                elif rest == "mlp.down_proj.weight":
                    out[new] = _Source(name, "cols", d, (shape[0], d))
                else:
                    out[new] = _Source(name, "same", shape=shape)
            elif name == PLE_TABLE:
                out[name] = _Source(name, "ple", shape=(shape[0], len(plan.layers_kept) * p))
            elif name == PLE_PROJECTION:
                out[name] = _Source(name, "ple_projection", shape=(len(plan.layers_kept) * p, shape[1]))
            else:
                out[name] = _Source(name, "same", shape=shape)
        return out

    # ------------------------------------------------------------ metadata (CheckpointReader's interface)

    def _table(self) -> dict[str, _Source]:
        return self._map

    def _src(self, name: str) -> _Source:
        try:
            return self._map[name]
        except KeyError:
            raise SliceError(f"{self.reader.path}: no tensor {name!r} in the sliced model "
                             f"(slice {self.spec.name!r}, {self.plan.text.num_hidden_layers} layers).") from None

    def source_name(self, name: str) -> str:
        """The source checkpoint tensor a sliced tensor is read from."""
        return self._src(name).name

    def shape(self, name: str) -> tuple[int, ...]:
        return self._src(name).shape

    def dtype(self, name: str) -> str:
        return self.reader.dtype(self._src(name).name)

    # ------------------------------------------------------------ data

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One sliced tensor; floating types become `dtype` (float32 by default), as CheckpointReader."""
        s = self._src(name)
        if s.kind == "same":
            return self.reader.tensor(s.name, dtype)
        return self.rows(name, 0, s.shape[0], dtype)

    def raw(self, name: str) -> torch.Tensor:
        """One sliced tensor in its stored dtype."""
        return self.tensor(name, _torch_dtype(self.dtype(name)))

    def numpy(self, name: str):
        return self.tensor(name).numpy()

    def rows(self, name: str, start: int, stop: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows [start, stop) of a sliced tensor, reading only the matching source rows."""
        s = self._src(name)
        if not (s.shape and 0 <= start <= stop <= s.shape[0]):
            raise IndexError(f"{name}: rows [{start}, {stop}) outside shape {s.shape}")
        r = self.reader
        if s.kind in ("same", "rows"):  # "rows": the kept rows are a prefix
            return r.rows(s.name, start, stop, dtype)
        if s.kind == "cols":
            return r.rows(s.name, start, stop, dtype)[:, : s.width].contiguous()
        import torch

        plan, p = self.plan, self.source_config.text.hidden_size_per_layer_input
        if s.kind == "ple":  # (rows, L*P) -> the kept layers' P-column blocks
            block = r.rows(s.name, start, stop, dtype)
            src_layers = self.source_config.text.num_hidden_layers
            kept = torch.tensor(plan.layers_kept)
            return block.reshape(stop - start, src_layers, p).index_select(1, kept).reshape(stop - start, s.shape[1])
        parts = []  # "ple_projection": sliced rows map to the kept layers' P-row blocks
        for j, i in enumerate(plan.layers_kept):
            a, b = max(start, j * p), min(stop, (j + 1) * p)
            if a < b:
                parts.append(r.rows(s.name, i * p + a - j * p, i * p + b - j * p, dtype))
        if not parts:
            return r.rows(s.name, 0, 0, dtype)
        return torch.cat(parts)

    def view(self, name: str) -> _RowView:
        """A lazy array-like (`.shape`, `[a:b]` along rows) for row-chunked consumers (lowering's splice)."""
        return _RowView(self, name)

    def close(self) -> None:
        if self._owns_reader:
            self.reader.close()

    def __enter__(self) -> SlicedCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RowView:
    """`sliced.view(name)[a:b]` reads rows a..b through `rows()`; `.shape` without reading."""

    def __init__(self, sliced: SlicedCheckpoint, name: str):
        self._sliced, self._name = sliced, name
        self.shape = sliced.shape(name)

    def __getitem__(self, key: slice) -> torch.Tensor:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a sliced tensor view supports only [start:stop] row ranges")
        start, stop, _ = key.indices(self.shape[0])
        return self._sliced.rows(self._name, start, max(start, stop))
