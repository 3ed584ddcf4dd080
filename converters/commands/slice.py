"""`gemma3n-edge slice`: MatFormer slices of an E4B-shaped checkpoint (converters/matformer.py).

    gemma3n-edge slice --list                              the published presets
    gemma3n-edge slice CKPT --slice E2B                    check a slice against a checkpoint
    gemma3n-edge slice CKPT --slice spec.json --export-hf DIR   write it in Hugging Face layout

`build CKPT --slice ...` lowers a slice directly; this verb is for inspecting specs and for people
who want the sliced checkpoint itself (to fine-tune or run elsewhere).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from edge.errors import UserError

NAME = "slice"
HELP = "MatFormer slicing (E4B -> E2B and mix-n-match sizes): list presets, check a spec, export in HF layout."
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 2GB, 500MB, 1GiB)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


def _params(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 10**8 else f"{n:,}"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", nargs="?", type=Path, help="source Hugging Face checkpoint directory (E4B-shaped)")
    p.add_argument("--slice", dest="spec", metavar="NAME|spec.json",
                   help="a published preset (see --list) or a JSON file with ffn_hidden_dims (one width per kept "
                        "layer) and layers_skipped (source layer indices)")
    p.add_argument("--export-hf", type=Path, metavar="DIR", help="write the sliced checkpoint to DIR (HF layout; an earlier export there is replaced, nothing else)")
    p.add_argument("--max-shard-size", type=_size, default="2GB", metavar="SIZE",
                   help="split model.safetensors into shards of at most SIZE (default 2GB)")
    p.add_argument("--list", action="store_true", help="list the published presets and exit")
    from edge.commands._args import add_json_flag

    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from edge.commands._args import messages_to_stderr, print_json

    with messages_to_stderr(args.json):
        result = _run(args)
    if args.json:
        print_json(result)
    return 0


def _run(args: argparse.Namespace) -> dict:
    from converters import matformer, matformer_export
    from converters.gemma3n.config import Gemma3nConfig, TextConfig

    if args.list:
        e4b = TextConfig()  # the dataclass defaults are E4B's
        print(f"{'name':14s} {'layers':>6s} {'published':>9s} {'counted':>8s} {'MMLU-PT':>7s}  skipped")
        presets = {}
        for name, spec in matformer.presets().items():
            counted = matformer.effective_params(matformer.plan_slice(spec, e4b).text) / 1e9
            print(f"{name:14s} {spec.num_layers:6d} {spec.effective_params_b:8.2f}B {counted:7.3f}B "
                  f"{spec.mmlu_pt_percent:6.1f}%  {list(spec.layers_skipped) or '-'}")
            presets[name] = {"layers": spec.num_layers, "published_effective_params_b": spec.effective_params_b,
                             "counted_effective_params_b": round(counted, 4), "mmlu_pt_percent": spec.mmlu_pt_percent,
                             "layers_skipped": list(spec.layers_skipped)}
        return {"presets": presets}
    if args.ckpt is None or args.spec is None:
        raise UserError("give a checkpoint and --slice NAME|spec.json (or --list to see the presets)")
    if args.export_hf is not None:
        r = matformer_export.export_sliced_hf(args.ckpt, args.spec, args.export_hf, max_shard_bytes=args.max_shard_size)
        print(f"wrote {r.out_dir}: slice {r.spec.name!r}, {r.config.text.num_hidden_layers} layers, "
              f"{r.num_tensors} tensors ({r.tensor_bytes / 1e9:.2f} GB), "
              f"{_params(r.effective_params)} effective parameters")
        return {"out": str(r.out_dir), "slice": r.spec.name, "layers": r.config.text.num_hidden_layers,
                "tensors": r.num_tensors, "tensor_bytes": r.tensor_bytes, "effective_params": r.effective_params}
    plan = matformer.plan_slice(matformer.resolve_slice(args.spec), Gemma3nConfig.from_hf(args.ckpt))
    t = plan.text
    print(f"slice {plan.spec.name!r} fits {args.ckpt}: {plan.source.num_hidden_layers} -> {t.num_hidden_layers} "
          f"layers (skipped {list(plan.spec.layers_skipped) or 'none'}), {t.num_kv_shared_layers} KV-shared, "
          f"FFN widths {sorted(set(t.intermediate_size))}, "
          f"{_params(matformer.effective_params(t))} effective parameters "
          f"(source {_params(matformer.effective_params(plan.source))})")
    return {"slice": plan.spec.name, "source_layers": plan.source.num_hidden_layers, "layers": t.num_hidden_layers,
            "layers_skipped": list(plan.spec.layers_skipped), "kv_shared_layers": t.num_kv_shared_layers,
            "ffn_widths": sorted(set(t.intermediate_size)), "effective_params": matformer.effective_params(t),
            "source_effective_params": matformer.effective_params(plan.source)}
