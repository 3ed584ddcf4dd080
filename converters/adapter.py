"""A PEFT LoRA adapter merged into a checkpoint's weights as they stream (`build --adapter DIR`).

`AdaptedCheckpoint(reader, adapter_dir)` offers the CheckpointReader interface with every
targeted weight read as PEFT's `merge_and_unload` would leave it: W + scale·B·A for a Linear
(`lora_A` [r, in], `lora_B` [out, r]), W + scale·(B·A)ᵀ for an Embedding (`lora_embedding_A`
[r, vocab], `lora_embedding_B` [dim, r]), and a `modules_to_save` weight replacing W outright.
scale is lora_alpha / r (lora_alpha / √r with use_rslora), with `rank_pattern` and
`alpha_pattern` matched as PEFT matches them (`peft.utils.other.get_pattern_key`). Only the
adapter's headers are read up front; a module's A and B are read when its weight is, and
`rows()` merges just the rows asked for, so the 262k-row tables never exist merged in memory.

What PEFT can save but this merge does not reproduce (DoRA, LoRA biases, conv layers, fan-in-
fan-out layouts, other PEFT methods) is refused up front, naming the module.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.errors import UserError

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."  # PEFT's saved names: the wrapped model's module paths under this
# key suffix -> (role, layer type). A saved name is "<module path>.<suffix>".
_SUFFIXES = {"lora_A.weight": ("A", "linear"), "lora_B.weight": ("B", "linear"),
             "lora_embedding_A": ("A", "embedding"), "lora_embedding_B": ("B", "embedding")}
_REFUSED_KEYS = {"lora_magnitude_vector": "DoRA (use_dora)", "lora_B.bias": "LoRA biases (lora_bias)",
                 "token_adapter": "trainable tokens"}

# LoraConfig options that make the adapter something other than W + scale·B·A on plain modules.
_REFUSED_OPTIONS = (("use_dora", "DoRA"), ("lora_bias", "LoRA biases"), ("fan_in_fan_out", "fan_in_fan_out"),
                    ("alora_invocation_tokens", "activated LoRA (aLoRA)"), ("target_parameters", "parameter LoRA"),
                    ("layer_replication", "layer replication"), ("trainable_token_indices", "trainable tokens"),
                    ("arrow_config", "Arrow routing"), ("use_bdlora", "BD-LoRA"), ("kasa_config", "KaSA"),
                    ("monteclora_config", "MonteCLoRA"))


class AdapterError(UserError):
    """The adapter cannot be merged into this checkpoint as PEFT would merge it."""


@dataclass(frozen=True)
class _Lora:
    module: str  # the module's path in the canonical model, e.g. model.language_model.layers.0.mlp.up_proj
    kind: str  # "linear" | "embedding"
    a: str  # the adapter's tensor names
    b: str
    scale: float


def adapter_digests(adapter_dir: str | Path) -> dict[str, str]:
    """sha256 of the adapter's two files, for the manifest's provenance."""
    from edge.fileio import sha256_file

    d = Path(adapter_dir)
    return {n: sha256_file(d / n) for n in (CONFIG_FILE, WEIGHTS_FILE)}


def _read_config(d: Path) -> dict[str, Any]:
    if not d.is_dir():
        raise AdapterError(f"--adapter {d}: not a directory; pass the folder PEFT's save_pretrained wrote "
                           f"({CONFIG_FILE} + {WEIGHTS_FILE})")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (d / name).is_file():
            hint = " (a .bin adapter: load it with PEFT and save_pretrained it again, which writes safetensors)" \
                if name == WEIGHTS_FILE and (d / "adapter_model.bin").is_file() else ""
            raise AdapterError(f"--adapter {d}: no {name}{hint}")
    try:
        cfg = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise AdapterError(f"{d / CONFIG_FILE}: not a valid adapter config ({e})") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{d / CONFIG_FILE}: peft_type {cfg.get('peft_type')!r}; only LoRA adapters can be "
                           "merged (merge it with PEFT's merge_and_unload, save the model, and build that)")
    for key, what in _REFUSED_OPTIONS:
        if cfg.get(key):
            raise AdapterError(f"{d / CONFIG_FILE}: {key} is set; {what} adapters are not supported (merge it with "
                               "PEFT's merge_and_unload, save the model, and build that)")
    if not isinstance(cfg.get("r"), int) or cfg["r"] <= 0 or not isinstance(cfg.get("lora_alpha"), (int, float)):
        raise AdapterError(f"{d / CONFIG_FILE}: needs a positive integer r and a number lora_alpha")
    return cfg


def _pattern(patterns: dict, module: str, default: float) -> float:
    for key, value in patterns.items():  # PEFT's get_pattern_key: first key matching a dotted suffix
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


class AdaptedCheckpoint:
    """`reader` (a CheckpointReader) with the LoRA adapter in `adapter_dir` merged in (see module doc)."""

    def __init__(self, reader: Any, adapter_dir: str | Path):
        from converters.checkpoint import canonical_name, read_header, rule_for

        self.reader, self.adapter_dir = reader, Path(adapter_dir)
        self.path, self.files = reader.path, reader.files
        cfg = _read_config(self.adapter_dir)
        self.config = cfg
        self._infos = read_header(self.adapter_dir / WEIGHTS_FILE)
        parts: dict[str, dict[str, str]] = {}
        kinds: dict[str, str] = {}
        self._replaced: dict[str, str] = {}  # canonical weight name -> adapter tensor (modules_to_save)
        for info in self._infos.values():
            stored = info.stored_name
            name = stored.removeprefix(_PREFIX)
            refused = next((w for k, w in _REFUSED_KEYS.items() if f".{k}" in name), None)
            if refused:
                raise AdapterError(f"{self.adapter_dir}: {name} is {refused}, which this merge does not support")
            suffix = next((s for s in _SUFFIXES if name.endswith("." + s)), None)
            if suffix is None:  # a modules_to_save copy: the module's full tensor
                self._replaced[canonical_name(name)] = stored
                continue
            module = canonical_name(name[: -len(suffix) - 1])
            role, kind = _SUFFIXES[suffix]
            parts.setdefault(module, {})[role] = stored
            kinds[module] = kind
        self._loras: dict[str, _Lora] = {}
        for module, ab in sorted(parts.items()):
            if f"{module}.weight" not in reader and rule_for(f"{module}.weight") == "if-kv-owner":
                continue  # K/V of a KV-shared layer: never computed, so neither is its LoRA
            self._loras[f"{module}.weight"] = self._lora(module, kinds[module], ab, cfg)
        if not self._loras and not self._replaced:
            raise AdapterError(f"{self.adapter_dir / WEIGHTS_FILE}: holds no LoRA weights")

    def _lora(self, module: str, kind: str, ab: dict[str, str], cfg: dict) -> _Lora:
        weight = f"{module}.weight"
        where = f"{self.adapter_dir}: module {module}"
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{where} has lora_{'A' if 'A' not in ab else 'B'} missing; the adapter file is "
                               "incomplete: save it again")
        if weight not in self.reader:
            raise AdapterError(f"{where} is not in the checkpoint ({self.reader.path}): the adapter was trained on "
                               "a different model (check base_model_name_or_path in adapter_config.json)")
        a, b = self._shape(ab["A"]), self._shape(ab["B"])
        if len(a) != 2 or len(b) != 2:
            raise AdapterError(f"{where}: lora_A {list(a)} / lora_B {list(b)} are not matrices (a conv LoRA?); "
                               "only Linear and Embedding modules can be merged")
        w = self.reader.shape(weight)
        rank = a[0]
        expect = (b[0], a[1]) if kind == "linear" else (a[1], b[0])
        if len(w) != 2 or tuple(w) != expect or b[1] != rank:
            raise AdapterError(f"{where}: lora_A {list(a)} x lora_B {list(b)} does not fit the weight {list(w)}: "
                               "the adapter was trained on a different model size")
        r = _pattern(cfg.get("rank_pattern") or {}, module, cfg["r"])
        if r != rank:
            raise AdapterError(f"{where}: rank {rank} in the weights but {r} in {CONFIG_FILE}")
        alpha = _pattern(cfg.get("alpha_pattern") or {}, module, cfg["lora_alpha"])
        scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
        return _Lora(module, kind, ab["A"], ab["B"], float(scale))

    # ------------------------------------------------------------ what is merged

    def merged_modules(self) -> list[str]:
        """The module paths this adapter changes (LoRA merges and modules_to_save replacements)."""
        return sorted({lo.module for lo in self._loras.values()} | {n.removesuffix(".weight") for n in self._replaced})

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.adapter_dir.resolve()), "files": adapter_digests(self.adapter_dir),
                "r": self.config["r"], "lora_alpha": self.config["lora_alpha"],
                "use_rslora": bool(self.config.get("use_rslora")), "modules": len(self.merged_modules())}

    # ------------------------------------------------------------ CheckpointReader interface

    def names(self) -> list[str]:
        return self.reader.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.reader.shape(name)

    def dtype(self, name: str) -> str:
        return self.reader.dtype(name)

    def info(self, name: str):
        return self.reader.info(name)

    def __contains__(self, name: object) -> bool:
        return name in self.reader

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.reader)

    def modalities(self) -> tuple[str, ...]:
        return self.reader.modalities()  # an adapter adds no tower

    def verify(self, config, modalities: tuple[str, ...] | None = None):
        for name in self._replaced:
            if name not in self.reader or self._shape(self._replaced[name]) != tuple(self.reader.shape(name)):
                raise AdapterError(f"{self.adapter_dir}: saved module {name} does not match the checkpoint's tensor")
        return self.reader.verify(config, modalities)

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        shape = self.reader.shape(name)
        if (name in self._loras or name in self._replaced) and shape:
            return self.rows(name, 0, shape[0], dtype)
        return self.reader.tensor(name, dtype)

    def raw(self, name: str) -> torch.Tensor:
        if name in self._loras or name in self._replaced:
            from converters.checkpoint import _PREAD_DTYPES
            import torch

            return self.tensor(name, getattr(torch, _PREAD_DTYPES.get(self.dtype(name), "float32")))
        return self.reader.raw(name)

    def numpy(self, name: str):
        return self.tensor(name).numpy()

    def rows(self, name: str, start: int, stop: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        import torch

        out = torch.float32 if dtype is None else dtype
        if name in self._replaced:
            return self._adapter_rows(self._replaced[name], start, stop).to(out)
        lora = self._loras.get(name)
        if lora is None:
            return self.reader.rows(name, start, stop, dtype)
        w = self.reader.rows(name, start, stop, torch.float32)
        a, b = self._adapter_tensor(lora.a), self._adapter_tensor(lora.b)
        if lora.kind == "linear":  # W [out, in] rows are output features: B's rows
            delta = b[start:stop] @ a
        else:  # Embedding W [vocab, dim] rows are tokens: A's columns
            delta = (b @ a[:, start:stop]).T
        return (w + lora.scale * delta).to(out)

    def _shape(self, stored: str) -> tuple[int, ...]:
        return next(i.shape for i in self._infos.values() if i.stored_name == stored)

    def _adapter_tensor(self, stored: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.adapter_dir / WEIGHTS_FILE), framework="pt") as f:
            return f.get_tensor(stored).float()

    def _adapter_rows(self, stored: str, start: int, stop: int) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.adapter_dir / WEIGHTS_FILE), framework="pt") as f:
            return f.get_slice(stored)[start:stop].float()

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> AdaptedCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
