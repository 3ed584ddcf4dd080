"""Benchmark the real-size Gemma 3n vision encoder (mobilenetv5_300m_enc, 294M params, random weights).

    .venv/bin/python tools/bench_vision.py --out bench_vision.json [--work DIR] [--size 768]
        [--recipes fp32,fp16,int8,int4] [--variants int8-all,int8-weight-only,int4-conv] [--layer-scale G]

Stages, each in its own process so each peak RSS is that stage's own:
1. reference: seeded random weights (timm's init; embed_vision drawn here), torch eager features of
   two 768 px images (a synthetic photo-like picture and uniform noise) and the FLOP count.
2. lower: `converters.export.export_modality("vision", ..., "fp32")` reading those weights from a
   safetensors file (as a build does): lowering with weights as graph inputs + the streamed splice,
   both .tflite files, time and peak RSS.
3. quantize: `quantize_file` with one recipe's (or variant's) vision rules: size, time, peak RSS.
4. run: the LiteRT Interpreter (XNNPACK, 2 threads): latency per image, and feature error against
   the fp32 .tflite (relative L2, cosine, max abs), adapter embeddings error end to end. For fp32,
   also the error against torch eager, and how much the features move when the photo is JPEG
   re-encoded (quality 90) or shifted by one pixel: a yardstick for "small" errors.

Random weights are not trained ones: timm initialises every layer-scale gamma to 1e-5, so residual
branches barely contribute and error propagates mostly through the stage-opening blocks.
`--layer-scale G` draws gammas around G instead, to measure with every branch active.
Other processes share this machine's 2 cores: latencies are upper bounds.
"""

from __future__ import annotations

import argparse
import io
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
ARCH = "mobilenetv5_300m_enc"
# Extra rule sets measured beside the recipes, to justify the recipes' vision rules.
VARIANTS = {
    "int8-all": (("*", "int8", "int8 depthwise too"),),
    "int8-weight-only": (("DEPTHWISE_CONV_2D", None, ""), ("*", "int8_wo", "int8 stored, fp32 compute")),
    "int4-conv": (("DEPTHWISE_CONV_2D", "int8", ""), ("CONV_2D", "int4", "int4 per-channel convs"),
                  ("FULLY_CONNECTED", "int8", "")),
}



def _config():
    from converters.gemma3n.config import Gemma3nConfig

    return Gemma3nConfig()  # E2B/E4B: mobilenetv5_300m_enc, 256 soft tokens, text hidden 2048


def _weights(layer_scale: float | None) -> dict:
    """Canonical name -> tensor: timm's seeded init for the tower, a seeded draw for embed_vision."""
    import timm
    import torch

    from converters.gemma3n import vision as V

    torch.manual_seed(SEED)
    tower = timm.create_model(ARCH, pretrained=False, num_classes=0)
    g = torch.Generator().manual_seed(SEED + 1)
    state = {}
    for k, v in tower.state_dict().items():
        if layer_scale is not None and k.endswith("layer_scale.gamma"):
            v = layer_scale * (1 + 0.5 * torch.randn(v.shape, generator=g)).abs()
        state[V.ENCODER_PREFIX + k] = v
    del tower
    c, h = 2048, _config().text.hidden_size
    p = V.ADAPTER_PREFIX
    state[p + "embedding.weight"] = torch.randn(128, c, generator=g)
    state[p + "hard_embedding_norm.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
    state[p + "soft_embedding_norm.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
    state[p + "embedding_projection.weight"] = torch.randn(h, c, generator=g) * c**-0.5
    return state


def _images(size: int):
    """A photo-like picture (smooth shading, flat patches, edges, sensor noise) and uniform noise."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin(6 * xx + 1) * 0.5 + 0.5, np.cos(4 * yy) * 0.5 + 0.5, xx * yy], -1)
    for _ in range(24):
        x0, y0 = rng.integers(0, size, 2)
        r = int(rng.integers(size // 30, size // 6))
        img[max(0, y0 - r):y0 + r, max(0, x0 - r):x0 + r] = rng.random(3)
    img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
    photo = (np.round(img * 255) / 255).astype(np.float32)[None]  # on the 1/255 grid, as a decoded file
    return {"photo": photo, "noise": rng.random((1, size, size, 3), dtype=np.float32)}


def _perturbed(photo):
    """The photo JPEG re-encoded at quality 90, and shifted right by one pixel."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((photo[0] * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=90)
    jpeg = (np.asarray(Image.open(buf)).astype(np.float32) / 255)[None]
    shift = np.concatenate([photo[:, :, :1], photo[:, :, :-1]], axis=2)
    return {"jpeg90": jpeg, "shift1px": shift}


def _errors(got, ref) -> dict:
    import numpy as np

    a, b = got.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    rows_g, rows_r = got.reshape(-1, got.shape[-1]), ref.reshape(-1, ref.shape[-1])
    cos_rows = (rows_g * rows_r).sum(-1) / (np.linalg.norm(rows_g, axis=-1) * np.linalg.norm(rows_r, axis=-1))
    return {"rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(b)), "max_abs": float(np.abs(a - b).max()),
            "ref_rms": float(np.sqrt((b**2).mean())), "cosine": float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)),
            "worst_token_cosine": float(cos_rows.min())}


# ---------------------------------------------------------------- stages


def stage_reference(work: Path, size: int, layer_scale: float | None) -> dict:
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from converters.gemma3n import vision as V

    t0 = time.time()
    state = _weights(layer_scale)
    dims = V.VisionDims.from_config(_config(), (size, size))
    enc = V.VisionEncoder(V.build_timm_encoder(dims, state.__getitem__), dims.vision_soft_tokens_per_image)
    params = sum(p.numel() for p in enc.parameters())
    images = _images(size)
    out, seconds = {}, {}
    with torch.no_grad():
        for name, x in images.items():
            np.save(work / f"image_{name}.npy", x)
            t = time.time()
            if name == "photo":
                with FlopCounterMode(display=False) as fc:
                    f = enc(torch.from_numpy(x))["features"].numpy()
                flops = fc.get_total_flops()
            else:
                f = enc(torch.from_numpy(x))["features"].numpy()
            seconds[name] = time.time() - t
            np.save(work / f"torch_{name}.npy", f)
            out[name] = list(f.shape)
    return {"params_encoder": params, "gmacs_per_image": flops / 2e9, "torch_eager_seconds": seconds,
            "feature_shape": out, "seconds": time.time() - t0, "peak_rss_mib": peak_rss_mib()}


def stage_lower(work: Path, size: int, layer_scale: float | None) -> dict:
    from converters.components.spec import Source
    from converters.export import export_modality

    from safetensors import safe_open
    from safetensors.torch import save_file

    t0 = time.time()
    # Through a safetensors file, as a build reads a checkpoint: the peak is the export's own.
    path = work / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in _weights(layer_scale).items()}, str(path))
    reader = safe_open(str(path), "pt")
    t1 = time.time()
    source = Source(_config(), reader.get_tensor, work / "graphs", image_size=(size, size))
    arts = {k: a for k, (a, _) in export_modality("vision", source, "fp32", work / "fp32").items()}
    path.unlink()
    return {"seconds": time.time() - t1, "weights_seconds": t1 - t0, "peak_rss_mib": peak_rss_mib(),
            "files": {a.file: (work / "fp32" / a.file).stat().st_size for a in arts.values()},
            "signatures": {k: {n: s.to_dict() for n, s in a.signatures.items()} for k, a in arts.items()}}


def _rules(name: str):
    from converters.quant import by_op

    return VARIANTS[name] if name in VARIANTS else by_op.rules_for(name)


def stage_quantize(work: Path, name: str) -> dict:
    from converters.gemma3n import vision as V
    from converters.quant import by_op

    out = {}
    for file in (V.ENCODER_FILE, V.ADAPTER_FILE):
        t = time.time()
        info = by_op.quantize_file(work / "fp32" / file, work / name / file, _rules(name))
        out[file] = {"bytes": (work / name / file).stat().st_size, "seconds": time.time() - t, **info}
    return {**out, "peak_rss_mib": peak_rss_mib()}


def stage_run(work: Path, name: str, size: int, threads: int) -> dict:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from converters.gemma3n import vision as V

    d = work / name
    t = time.time()
    enc = Interpreter(str(d / V.ENCODER_FILE), num_threads=threads)
    enc_run = enc.get_signature_runner(V.encoder_signature((size, size)))
    ada_run = Interpreter(str(d / V.ADAPTER_FILE), num_threads=threads).get_signature_runner(V.ADAPTER_SIGNATURE)
    load = time.time() - t
    images = {k: np.load(work / f"image_{k}.npy") for k in ("photo", "noise")}
    res: dict = {"load_seconds": load, "latency_seconds": [], "features": {}, "mm_embedding": {}}
    enc_run(images=images["photo"])  # warm-up: XNNPACK packs weights on the first call
    for k, x in images.items():
        t = time.time()
        f = enc_run(images=x)["features"]
        res["latency_seconds"].append(time.time() - t)
        mm = ada_run(soft_tokens=f)["mm_embedding"]
        np.save(d / f"features_{k}.npy", f)
        np.save(d / f"mm_{k}.npy", mm)
        if name == "fp32":
            res["features"][k] = {"vs_torch": _errors(f, np.load(work / f"torch_{k}.npy"))}
        else:
            res["features"][k] = _errors(f, np.load(work / "fp32" / f"features_{k}.npy"))
            ref_mm = np.load(work / "fp32" / f"mm_{k}.npy")
            res["mm_embedding"][k] = _errors(mm, ref_mm)
    if name == "fp32":  # the yardstick: how far plausible input changes move fp32 features
        base = np.load(d / "features_photo.npy")
        res["input_change_yardstick"] = {
            k: _errors(enc_run(images=x)["features"], base) for k, x in _perturbed(images["photo"]).items()}
    res["latency_median_seconds"] = float(np.median(res["latency_seconds"]))
    res["peak_rss_mib"] = peak_rss_mib()
    return res


# ---------------------------------------------------------------- driver



def main() -> None:
    p = stage_parser(__doc__)
    p.add_argument("--size", type=int, default=768, help="image side in pixels (the real preprocessor: 768)")
    p.add_argument("--recipes", default="fp32,fp16,int8,int4")
    p.add_argument("--variants", default=",".join(VARIANTS), help="extra rule sets to compare ('' for none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layer-scale", type=float, default=None, help="draw layer-scale gammas around this value")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.stage:
        work = Path(a.work)
        fn = {"reference": lambda: stage_reference(work, a.size, a.layer_scale),
              "lower": lambda: stage_lower(work, a.size, a.layer_scale),
              "quantize": lambda: stage_quantize(work, a.name),
              "run": lambda: stage_run(work, a.name, a.size, a.threads)}[a.stage]
        print(json.dumps(fn()))
        return
    if not a.out:
        p.error("--out is required")
    with work_dir(a.work) as work:
        common = ["--work", str(work), "--size", str(a.size), "--threads", str(a.threads)]
        if a.layer_scale is not None:
            common += ["--layer-scale", str(a.layer_scale)]
        report = {"arch": ARCH, "image_size": a.size, "threads": a.threads, "layer_scale": a.layer_scale,
                  "machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg(),
                              "note": "2 cores shared with other processes: latencies are upper bounds"}}
        for stage in ("reference", "lower"):
            report[stage] = run_child(__file__, ["--stage", stage, *common])
            print(json.dumps({stage: report[stage]}), flush=True)
            if "error" in report[stage]:
                sys.exit(f"{stage} failed:\n" + report[stage]["error"])
        report["recipes"] = {}
        names = [n for n in a.recipes.split(",") if n] + [n for n in a.variants.split(",") if n]
        for name in names:
            entry = {"quantize": {"files": report["lower"]["files"]}} if name == "fp32" else {
                "quantize": run_child(__file__, ["--stage", "quantize", "--name", name, *common])}
            if "error" not in entry["quantize"]:
                entry["run"] = run_child(__file__, ["--stage", "run", "--name", name, *common])
            entry["kind"] = "variant" if name in VARIANTS else "recipe"
            report["recipes"][name] = entry
            print(json.dumps({name: entry}), flush=True)
        write_report(a.out, report)


if __name__ == "__main__":
    main()
