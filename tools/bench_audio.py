"""Benchmark the real-size Gemma 3n audio encoder (681M params, random weights) on this CPU.

    .venv/bin/python tools/bench_audio.py --out bench_audio.json [--work DIR] [--recipes fp32,fp16,int8,int4]

Stages (each in its own process, so every peak RSS is that stage's own):
1. reference: build `converters.gemma3n.audio.AudioEncoder` for the default `Gemma3nAudioConfig`
   with seeded random weights and run it eagerly on 30 s of audio.
2. export: one recipe at a time through `converters.export.export_modality` (what `gemma3n-edge build` runs): the
   first lowers the weight-free graphs (kept in WORK/graphs), each splices the random weights in
   from get(name), one tensor at a time, quantizing the FULLY_CONNECTED weights.
3. run: the LiteRT Interpreter (XNNPACK, 2 threads) on the same 30 s clip: latency per clip and
   error against the eager fp32 reference.

The JSON holds, per stage, wall seconds and peak RSS, and per recipe the file size, latency and
error (max abs, relative RMS, worst per-token cosine). Other processes on the machine share the
cores: latency is an upper bound on an idle machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchutil import run_child, stage_parser, work_dir, write_report  # tools/ is on sys.path when a tool runs
from edge.runtime.metrics import peak_rss_mib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED = 0



def _config():
    from converters.gemma3n.config import Gemma3nConfig

    return Gemma3nConfig()  # E2B/E4B audio tower: the defaults are the real one


def _random_get(seed: int):
    """get(name) -> a seeded random tensor of the shape the module asks for (via a shape table)."""
    import torch

    def make(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + sum(map(ord, name)) * 7919)
        if name.endswith("per_dim_scale"):
            return torch.randn(shape, generator=g) * 0.1
        if len(shape) == 1:  # norm scales around 1
            return 1.0 + torch.randn(shape, generator=g) * 0.1
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        return torch.randn(shape, generator=g) * fan_in**-0.5

    return make


def _clip_features():
    """Log-mel of 30 s of a chirp + noise (2997 frames), zero-padded to the 3008-frame window."""
    import numpy as np

    from edge.runtime.audio import AudioFeatureExtractor

    rng = np.random.default_rng(SEED)
    t = np.arange(30 * 16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * (200 + 40 * t) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    f = AudioFeatureExtractor()(wave).features
    x = np.zeros((1, 3008, f.shape[1]), np.float32)
    x[0, : len(f)] = f
    mask = np.zeros((1, 3008), bool)
    mask[0, : len(f)] = True
    return x, mask


def _shape_table(cfg) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape of every tensor the audio components read (modules built on meta: no memory)."""
    import torch

    from converters.gemma3n import audio as A

    a = cfg.audio
    with torch.device("meta"):
        enc = A.AudioEncoder(a, A.default_window_frames(a))
        adp = A.AudioAdapter(a, cfg.text.hidden_size)
    shapes = {A.TOWER_PREFIX + n: tuple(p.shape) for n, p in enc.named_parameters()}
    shapes.update({A.EMBED_PREFIX + n: tuple(p.shape) for n, p in adp.named_parameters()})
    shapes[A.EMBED_PREFIX + "embedding.weight"] = (a.vocab_size, a.hidden_size)
    shapes[A.EMBED_PREFIX + "hard_embedding_norm.weight"] = (a.hidden_size,)
    return shapes


def _checkpoint_get(cfg):
    make, shapes = _random_get(SEED), _shape_table(cfg)
    return lambda name: make(name, shapes[name])


def stage_reference(work: Path) -> dict:
    """The eager fp32 encoder (weights in memory) on the clip: the reference every recipe is judged by."""
    import numpy as np
    import torch

    from converters.gemma3n import audio as A

    torch.set_num_threads(2)
    cfg = _config()
    t0 = time.perf_counter()
    enc = A.build_encoder(cfg, _checkpoint_get(cfg))
    params = sum(p.numel() for p in enc.parameters())
    build_s = time.perf_counter() - t0
    x, mask = _clip_features()
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = enc(torch.from_numpy(x), torch.from_numpy(mask))
    np.save(work / "reference.npy", ref["features"].numpy())
    return {"params": params, "build_s": build_s, "eager_torch_s": time.perf_counter() - t0,
            "peak_rss_mib": peak_rss_mib()}


def stage_export(work: Path, recipe: str) -> dict:
    """The audio components as `gemma3n-edge build` exports them: lower (weights as inputs; graphs kept in
    work/graphs, so only the first recipe lowers) + splice, weights from get(name) one at a time."""
    from converters.components.audio import ENCODER, fc_counts
    from converters.components.spec import Source
    from converters.export import export_modality

    cfg = _config()
    graphs = work / "graphs"
    lowered = not any(graphs.glob("*.tflite")) if graphs.exists() else True
    t0 = time.perf_counter()
    arts = export_modality("audio", Source(cfg, _checkpoint_get(cfg), graphs), recipe, work / recipe)
    seconds = time.perf_counter() - t0
    size = {k: (work / recipe / a.file).stat().st_size for k, (a, _) in arts.items()}
    return {"export_s": seconds, "lowered": lowered, "peak_rss_mib": peak_rss_mib(), "bytes": size[ENCODER],
            "weights": fc_counts(arts[ENCODER][1]), "warnings": [w for _, r in arts.values() if r for w in r.warnings],
            "artifact_bytes": size}


def stage_run(work: Path, recipe: str, repeats: int) -> dict:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    x, mask = _clip_features()
    ref = np.load(work / "reference.npy")
    t0 = time.perf_counter()
    runner = Interpreter(model_path=str(work / recipe / "audio_encoder.tflite"), num_threads=2).get_signature_runner(
        "audio_encoder")
    out = runner(src_inputs=x, mask=mask)  # first run: XNNPACK packs the weights
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = runner(src_inputs=x, mask=mask)
        times.append(time.perf_counter() - t0)
    got = out["features"][0]
    want = ref[0]
    cos = (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1) + 1e-30)
    return {"load_and_first_run_s": first_s, "latency_s": times, "latency_min_s": min(times) if times else None,
            "peak_rss_mib": peak_rss_mib(), "valid_tokens": int(out["mask"].sum()),
            "max_abs_err": float(np.abs(got - want).max()), "ref_max_abs": float(np.abs(want).max()),
            "rel_rms_err": float(np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2))),
            "min_token_cosine": float(cos.min()), "mean_token_cosine": float(cos.mean())}



def main() -> None:
    p = stage_parser(__doc__)
    p.add_argument("--recipes", default="fp32,fp16,int8,int4")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per recipe after the first")
    p.add_argument("--no-run", action="store_true", help="export only (no eager reference, no inference)")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--recipe", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.stage:
        work = Path(a.work)
        res = {"reference": lambda: stage_reference(work), "export": lambda: stage_export(work, a.recipe),
               "run": lambda: stage_run(work, a.recipe, a.repeats)}[a.stage]()
        print(json.dumps(res))
        return
    if not a.out:
        p.error("--out is required")
    with work_dir(a.work) as work:
        report = {"machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}, "window_frames": 3008,
                  "tokens": 188, "clip_seconds": 30, "threads": 2}
        if not a.no_run:
            report["reference"] = run_child(__file__, ["--stage", "reference", "--work", str(work)])
            print(json.dumps({"reference": report["reference"]}), flush=True)
            if "error" in report["reference"]:
                sys.exit("reference failed:\n" + report["reference"]["error"])
        report["recipes"] = {}
        for r in a.recipes.split(","):
            entry = {"export": run_child(__file__, ["--stage", "export", "--recipe", r, "--work", str(work)])}
            if not a.no_run and "error" not in entry["export"]:
                entry["run"] = run_child(__file__, ["--stage", "run", "--recipe", r, "--work", str(work),
                                                    "--repeats", str(a.repeats)])
            report["recipes"][r] = entry
            print(json.dumps({r: entry}), flush=True)
        write_report(a.out, report)


if __name__ == "__main__":
    main()
