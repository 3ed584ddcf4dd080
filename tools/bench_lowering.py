#!/usr/bin/env python
"""Benchmark graph/weights-separated lowering: peak RSS and time per stage, as JSON.

A decoder-shaped random model (embedding table, N x [RMSNorm, up hidden->ffn, down ffn->hidden],
final norm, lm_head) is written to a safetensors file in chunks; then, each in a fresh
subprocess (so every peak is its own):
  lower   - build the module on the meta device and `lower()` it (prefill_<T> + decode);
  splice  - `splice_weights()` per recipe, weights streamed from the safetensors file;
  run     - optionally one decode step of each model in the Interpreter (XNNPACK), outputs
            compared with the baked model's when there is one.
Peak RSS is the child's VmHWM. The baked path (litert-torch with the weights in the module)
is not run by default: LITERT.md measured it at 8.23 GB / 252 s for 613M params on this kind
of machine; `--baked` runs it too (needs ~3x the fp32 weight bytes of RAM).

    .venv/bin/python tools/bench_lowering.py --layers 18 --json bench.json      # ~620M params
    .venv/bin/python tools/bench_lowering.py --layers 2 --ffn 1024 --baked     # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _vmhwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------
# the model


def shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, f, v = cfg["hidden"], cfg["ffn"], cfg["vocab"]
    out = {"embed.weight": (v, h)}
    for i in range(cfg["layers"]):
        out |= {f"layers.{i}.norm.weight": (h,), f"layers.{i}.up.weight": (f, h), f"layers.{i}.down.weight": (h, f)}
    return out | {"final_norm.weight": (h,), "head.weight": (v, h)}


def build_module(cfg: dict):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class RMSNorm(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = RMSNorm(cfg["hidden"])
            self.up = nn.Linear(cfg["hidden"], cfg["ffn"], bias=False)
            self.down = nn.Linear(cfg["ffn"], cfg["hidden"], bias=False)

        def forward(self, x):
            return x + F.linear(F.gelu(F.linear(self.norm(x), self.up.weight)), self.down.weight)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(cfg["vocab"], cfg["hidden"])
            self.layers = nn.ModuleList(Layer() for _ in range(cfg["layers"]))
            self.final_norm = RMSNorm(cfg["hidden"])
            self.head = nn.Linear(cfg["hidden"], cfg["vocab"], bias=False)

        def forward(self, token_ids):
            x = F.embedding(token_ids, self.embed.weight)
            for layer in self.layers:
                x = layer(x)
            return {"logits": F.linear(self.final_norm(x), self.head.weight)}

    return Decoder().eval()


def write_weights(path: Path, cfg: dict, chunk_rows: int = 256) -> None:
    """Random weights (N(0, 0.02), norms near 1) written a chunk at a time."""
    rng = np.random.default_rng(0)
    header, offset = {}, 0
    for name, shape in shapes(cfg).items():
        n = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in shapes(cfg).items():
            if len(shape) == 1:
                f.write((1.0 + 0.05 * rng.standard_normal(shape)).astype(np.float32).tobytes())
                continue
            for a in range(0, shape[0], chunk_rows):
                rows = min(chunk_rows, shape[0] - a)
                f.write((0.02 * rng.standard_normal((rows, *shape[1:]), dtype=np.float32)).tobytes())


def samples(t: int):
    import torch

    return {"token_ids": torch.zeros(1, t, dtype=torch.int32)}


# ---------------------------------------------------------------------------------------------
# stages (each runs in its own process)


def stage_lower(cfg: dict, work: Path) -> dict:
    import torch

    from converters.lowering import lower

    t0 = time.perf_counter()
    with torch.device("meta"):
        module = build_module(cfg)
    info = lower(module, {f"prefill_{cfg['prefill']}": samples(cfg["prefill"]), "decode": samples(1)},
                 work / "graph.tflite")
    return {"seconds": time.perf_counter() - t0, "graph_bytes": os.path.getsize(work / "graph.tflite"),
            "weights": len(info.weights)}


def stage_splice(cfg: dict, work: Path, recipe: str) -> dict:
    from converters.lowering import SafetensorsSource, splice_weights

    t0 = time.perf_counter()
    report = splice_weights(work / "graph.tflite", work / f"model_{recipe}.tflite",
                            SafetensorsSource(work / "weights.safetensors"), recipe, component="decoder")
    return {"seconds": time.perf_counter() - t0, "model_bytes": report.nbytes, "formats": report.formats()}


def stage_run(cfg: dict, work: Path, recipe: str) -> dict:
    from converters.lowering import check

    t0 = time.perf_counter()
    inputs = {"token_ids": np.array([[1]], np.int32)}
    path = work / ("baked.tflite" if recipe == "baked" else f"model_{recipe}.tflite")
    out = check.run_interpreter(path, "decode", inputs)
    np.save(work / f"logits_{recipe}.npy", out["logits"])
    result = {"seconds": time.perf_counter() - t0, "finite": bool(np.isfinite(out["logits"]).all()),
              "logits_absmax": float(np.abs(out["logits"]).max())}
    if recipe != "baked" and (work / "logits_baked.npy").exists():  # same weights converted baked
        result["max_abs_diff_vs_baked"] = float(np.abs(out["logits"] - np.load(work / "logits_baked.npy")).max())
    return result


def stage_baked(cfg: dict, work: Path) -> dict:
    import litert_torch
    import torch

    from converters.lowering import SafetensorsSource

    t0 = time.perf_counter()
    module = build_module(cfg)
    source = SafetensorsSource(work / "weights.safetensors")
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.from_numpy(np.asarray(source(name))))
    litert_torch.config.show_progress = False
    (litert_torch.signature(f"prefill_{cfg['prefill']}", module, sample_kwargs=samples(cfg["prefill"]))
     .signature("decode", module, sample_kwargs=samples(1)).convert().export(str(work / "baked.tflite")))
    return {"seconds": time.perf_counter() - t0, "model_bytes": os.path.getsize(work / "baked.tflite")}


STAGES = {"lower": stage_lower, "splice": stage_splice, "run": stage_run, "baked": stage_baked}


def child(args: list[str]) -> None:
    stage, cfg, work, *rest = args
    result = STAGES[stage](json.loads(cfg), Path(work), *rest)
    result["peak_rss_mb"] = _vmhwm_mb()
    print("RESULT " + json.dumps(result))


def run_stage(stage: str, cfg: dict, work: Path, *rest: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", stage, json.dumps(cfg), str(work), *rest],
                          capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"stage {stage} {rest} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    result["wall_seconds"] = time.perf_counter() - t0  # includes interpreter start-up and imports
    print(f"{stage} {' '.join(rest)}: {result}", file=sys.stderr)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--prefill", type=int, default=32)
    ap.add_argument("--recipes", default="fp32,int8,int4")
    ap.add_argument("--run", action="store_true", help="also run one decode step of each spliced model")
    ap.add_argument("--baked", action="store_true", help="also convert with the weights baked in (memory hungry)")
    ap.add_argument("--workdir", help="keep files here (default: a temporary directory)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    cfg = {k: getattr(a, k) for k in ("layers", "hidden", "ffn", "vocab", "prefill")}
    params = sum(int(np.prod(s)) for s in shapes(cfg).values())
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        write_weights(work / "weights.safetensors", cfg)
        results = {"config": cfg, "params": params, "fp32_weight_bytes": params * 4,
                   "write_weights_seconds": time.perf_counter() - t0, "lower": run_stage("lower", cfg, work)}
        results["splice"] = {r: run_stage("splice", cfg, work, r) for r in a.recipes.split(",")}
        if a.baked:
            results["baked"] = run_stage("baked", cfg, work)
        if a.run:  # each model in its own process: the peaks are the runtime's, one model at a time
            results["run"] = {r: run_stage("run", cfg, work, r) for r in (["baked"] if a.baked else []) + a.recipes.split(",")}
        results["baked_reference_litert_md"] = {"params": 613e6, "peak_rss_mb": 8230, "seconds": 252}
    text = json.dumps(results, indent=1)
    if a.json:
        Path(a.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
