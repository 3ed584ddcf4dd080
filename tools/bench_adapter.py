#!/usr/bin/env python
"""Does `build --adapter` cost more memory than the adapter itself? Peak RSS of the same build
with and without a LoRA adapter, side by side in one run, as a JSON record.

The checkpoint is random at Gemma 3n E2B's widths (hidden 2048, FFN 8192, the full 262k-row
embedding and PLE tables) with fewer layers (--layers, default 10), so a build takes a minute or
two; what the merge could hold in memory (the tables merged whole, A·B products of every module
at once) is as large here as at full depth per layer. The adapter is LoRA on q/k/v/o and the MLP
projections of every layer plus the token embedding (the 262k-row table, merged row block by row
block), written in PEFT's file layout. A warm-up build fills the graph cache first, then the two
builds alternate (--repeats each) so load drift hits both alike; the record has every run.

    .venv/bin/python tools/bench_adapter.py --json benchmarks/adapter_memory_e2b10.json
    .venv/bin/python tools/bench_adapter.py --smoke      # tiny shape, seconds: the tool works

Acceptance (fine-tuner issue): peak with the adapter - peak without <= the adapter's bytes
(+ the measured spread of repeated identical builds, which the record reports).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def make_checkpoint(out: Path, layers: int, smoke: bool) -> None:
    from converters.gemma3n.config import Gemma3nConfig, TextConfig
    from converters.random_checkpoint import write_random_checkpoint

    if smoke:
        shutil.copytree(ROOT / "converters/data/tiny_trained", out)
        return
    text = TextConfig(num_hidden_layers=layers, intermediate_size=8192, num_kv_shared_layers=max(0, layers // 5))
    write_random_checkpoint(Gemma3nConfig(text=text, dtype="bfloat16"), out)


def make_adapter(ckpt: Path, out: Path, rank: int, seed: int = 0) -> int:
    """A LoRA adapter in PEFT's layout for every projection the checkpoint has, plus the token
    embedding; returns its bytes on disk."""
    import numpy as np
    from safetensors.numpy import save_file

    from converters.checkpoint import CheckpointReader

    rng = np.random.default_rng(seed)
    tensors = {}
    with CheckpointReader(ckpt) as reader:
        for name in reader.names():
            module = name.removesuffix(".weight")
            if not name.startswith("model.language_model.layers.") or not module.endswith(PROJECTIONS):
                continue
            rows, cols = reader.shape(name)
            key = f"base_model.model.{module}"
            tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((rank, cols)) * 0.02).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((rows, rank)) * 0.02).astype(np.float32)
        vocab, dim = reader.shape("model.language_model.embed_tokens.weight")
    emb = "base_model.model.model.language_model.embed_tokens"
    tensors[f"{emb}.lora_embedding_A"] = (rng.standard_normal((rank, vocab)) * 0.02).astype(np.float32)
    tensors[f"{emb}.lora_embedding_B"] = (rng.standard_normal((dim, rank)) * 0.02).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
        "target_modules": [p.split(".")[-1] for p in PROJECTIONS] + ["embed_tokens"],
        "base_model_name_or_path": str(ckpt)}, indent=1))
    return sum(f.stat().st_size for f in out.iterdir())


def measured_build(ckpt: Path, out: Path, recipe: str, adapter: Path | None, prefill: str, context: int) -> dict:
    from bench_build import run_build

    args = [str(ckpt), "--out", str(out), "--recipe", recipe, "--modalities", "text", "--prefill", prefill,
            "--context", str(context)] + (["--adapter", str(adapter)] if adapter else [])
    r = run_build(args, 0.2)
    if r["exit_code"] != 0:
        raise SystemExit(f"build failed ({' '.join(args)}):\n" + "\n".join(r["log_tail"]))
    return {"adapter": adapter is not None, "wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"],
            "load_avg": [round(x, 2) for x in os.getloadavg()],
            "peak_anon_mib": max((s.get("peak_RssAnon_mib", 0) for s in r["stages"]), default=None)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the record here (e.g. benchmarks/adapter_memory_e2b10.json)")
    p.add_argument("--layers", type=int, default=10, help="decoder layers at E2B widths (default 10)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--recipe", default="int8")
    p.add_argument("--repeats", type=int, default=2, help="builds of each kind, alternating (default 2)")
    p.add_argument("--work", default=str(ROOT / "build/bench/adapter"), help="scratch directory (removed first)")
    p.add_argument("--smoke", action="store_true", help="the tiny checkpoint: checks the tool in seconds")
    args = p.parse_args(argv)

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    ckpt, adapter = work / "ckpt", work / "adapter"
    make_checkpoint(ckpt, args.layers, args.smoke)
    adapter_bytes = make_adapter(ckpt, adapter, args.rank)
    prefill, context = ("8,16", 96) if args.smoke else ("128", 1024)
    measured_build(ckpt, work / "warm", args.recipe, adapter, prefill, context)  # fills the graph cache
    runs = []
    for i in range(args.repeats):
        for with_adapter in ((False, True) if i % 2 == 0 else (True, False)):
            runs.append(measured_build(ckpt, work / "out", args.recipe, adapter if with_adapter else None,
                                       prefill, context))
    def stats(key: str) -> dict:
        """Growth = worst with the adapter - worst without; spread = the widest range among builds of one kind."""
        base = [r[key] for r in runs if not r["adapter"]]
        lora = [r[key] for r in runs if r["adapter"]]
        return {"without_mib": max(base), "with_mib": max(lora), "growth_mib": round(max(lora) - max(base), 1),
                "spread_mib": round(max(max(base) - min(base), max(lora) - min(lora)), 1)}

    rss, anon = stats("peak_rss_mib"), stats("peak_anon_mib")
    from benchutil import machine

    record = {
        "tool": "tools/bench_adapter.py", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
        "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "shape": "tiny" if args.smoke else f"E2B widths, {args.layers} layers",
        "recipe": args.recipe, "modalities": ["text"], "rank": args.rank,
        "adapter_bytes": adapter_bytes, "adapter_mib": round(adapter_bytes / 2**20, 1),
        "runs": runs, "peak_rss": rss, "peak_anon": anon,
        # RSS counts the memory-mapped checkpoint pages too; anonymous memory is what the build allocates.
        "within_adapter_size": all(s["growth_mib"] <= adapter_bytes / 2**20 + s["spread_mib"] for s in (rss, anon)),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(record, indent=1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if record["within_adapter_size"] else 1


if __name__ == "__main__":
    sys.exit(main())
