"""The MatFormer slice spec: which source layers a slice keeps and how wide each kept FFN stays.

A `SliceSpec` has the fields of Google's published table (`data/matformer_slicing_configs.csv`,
read by `converters.matformer.presets`); `load_spec` reads a custom one from a JSON file with the
same fields. The spec is checked on its own here; `converters.matformer.plan_slice` checks it
against a checkpoint's config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import UserError

_SPEC_FIELDS = ("name", "num_layers", "effective_params_b", "mmlu_pt_percent", "ffn_hidden_dims", "layers_skipped")


class SliceError(UserError):
    """A slice spec that is malformed or does not fit the checkpoint it is applied to."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class SliceSpec:
    """Which layers a slice keeps and how wide each kept layer's FFN stays (CSV field names)."""

    # FFN width per kept layer, in layer order: the first d gate/up rows and down columns survive.
    ffn_hidden_dims: tuple[int, ...]
    # Source layer indices dropped (ascending); the rest are kept and renumbered 0..n-1.
    layers_skipped: tuple[int, ...] = ()
    # Preset short name (E2B, E2.69B, ...) or "custom".
    name: str = "custom"
    # Google's published effective parameters (billions) and pre-trained MMLU; None when unknown.
    effective_params_b: float | None = None
    mmlu_pt_percent: float | None = None

    def __post_init__(self) -> None:
        dims, skipped = self.ffn_hidden_dims, self.layers_skipped
        where = f"slice {self.name!r}"
        if not isinstance(dims, (list, tuple)) or not dims or not all(_is_int(d) for d in dims):
            raise SliceError(f"{where}: ffn_hidden_dims must be a non-empty list of integers (one FFN width per "
                             f"kept layer), got {dims!r}")
        if any(d <= 0 for d in dims):
            raise SliceError(f"{where}: every FFN width must be positive, got {list(dims)}")
        if not isinstance(skipped, (list, tuple)) or not all(_is_int(i) for i in skipped):
            raise SliceError(f"{where}: layers_skipped must be a list of layer indices, got {skipped!r}")
        dup = sorted({i for i in skipped if list(skipped).count(i) > 1})
        if dup:
            raise SliceError(f"{where}: layers_skipped lists layer(s) {dup} more than once; list each layer once")
        if any(i < 0 for i in skipped):
            raise SliceError(f"{where}: layers_skipped has negative index(es) {sorted(i for i in skipped if i < 0)}; "
                             "use 0-based source layer indices")
        object.__setattr__(self, "ffn_hidden_dims", tuple(dims))
        object.__setattr__(self, "layers_skipped", tuple(sorted(skipped)))

    @property
    def num_layers(self) -> int:
        """Layers the slice keeps."""
        return len(self.ffn_hidden_dims)

    @property
    def source_num_layers(self) -> int:
        """Layers of the model the spec is written for (kept + skipped)."""
        return self.num_layers + len(self.layers_skipped)

    @property
    def layers_kept(self) -> tuple[int, ...]:
        """Source indices of the kept layers, in order (new layer j is source layer layers_kept[j])."""
        skipped = set(self.layers_skipped)
        return tuple(i for i in range(self.source_num_layers) if i not in skipped)

    def to_json(self) -> dict[str, Any]:
        """The CSV's fields as JSON (what `from_json` reads back)."""
        return {"name": self.name, "num_layers": self.num_layers, "effective_params_b": self.effective_params_b,
                "mmlu_pt_percent": self.mmlu_pt_percent, "ffn_hidden_dims": list(self.ffn_hidden_dims),
                "layers_skipped": list(self.layers_skipped)}

    @classmethod
    def from_json(cls, obj: Any, where: str = "slice spec", name: str = "custom") -> SliceSpec:
        """A spec from a JSON object: {"ffn_hidden_dims": [one per kept layer], "layers_skipped": [...]}."""
        if not isinstance(obj, Mapping):
            raise SliceError(f"{where}: expected a JSON object with ffn_hidden_dims and layers_skipped, "
                             f"got {type(obj).__name__}")
        unknown = sorted(set(obj) - set(_SPEC_FIELDS))
        if unknown:
            raise SliceError(f"{where}: unknown field(s) {unknown}; allowed: {list(_SPEC_FIELDS)}")
        if "ffn_hidden_dims" not in obj:
            raise SliceError(f"{where}: ffn_hidden_dims is missing: give one FFN width per kept layer")
        try:
            spec = cls(ffn_hidden_dims=obj["ffn_hidden_dims"], layers_skipped=obj.get("layers_skipped") or (),
                       name=str(obj.get("name") or name), effective_params_b=obj.get("effective_params_b"),
                       mmlu_pt_percent=obj.get("mmlu_pt_percent"))
        except SliceError as e:
            raise SliceError(f"{where}: {e}") from None
        n = obj.get("num_layers")
        if n is not None and n != spec.num_layers:
            raise SliceError(f"{where}: num_layers is {n} but ffn_hidden_dims has {spec.num_layers} widths; "
                             "give one width per kept layer")
        return spec


def load_spec(path: str | Path) -> SliceSpec:
    """A custom spec from a JSON file (named after the file)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SliceError(f"{path}: cannot read the slice spec ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SliceError(f"{path}: not valid JSON ({e})") from None
    return SliceSpec.from_json(obj, where=str(path), name=path.stem)
