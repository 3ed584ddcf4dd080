"""The recipe table of the README: size, quality and decode speed per recipe, on the trained tiny model.

    .venv/bin/python tools/eval_recipes.py --out benchmarks/eval_recipes_tiny.json

For each recipe: build the shipped tiny trained model with all modalities (the demo's shapes),
`gemma3n-edge eval` it against the checkpoint on its own held-out text (tiny_trained/heldout.txt,
never trained on), and time greedy decoding of one prompt in the simulator and in Google's engine
(each with its library default threads, side by side in one run). Prints the markdown table and writes the JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "What does the for statement do?"
TOKENS = 64


def _speeds(directory: Path) -> dict:
    from edge.runtime.engine import Engine
    from edge.runtime.session import load_pipeline
    from edge.runtime.pipeline import GenerationConfig

    pipeline, _ = load_pipeline(directory)
    try:
        sim = pipeline.generate(PROMPT, config=GenerationConfig(max_tokens=TOKENS)).metrics
    finally:
        pipeline.close()
    engine, stats = Engine(directory / "model.litertlm", benchmark=True), {}
    try:
        engine.answer(PROMPT, max_tokens=TOKENS, stats=stats)
    finally:
        engine.close()
    return {"simulator": {"decode_tok_s": sim.decode_tokens_per_s, "generated": sim.generated_tokens},
            "engine": {"decode_tok_s": stats["decode_tok_s"], "prefill_tok_s": stats["prefill_tok_s"],
                       "generated": stats["decode_tokens"]}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--recipes", default="fp32,fp16,int8,int4,int4-pc,int4-b128,mixed")
    args = p.parse_args()

    import converters
    from converters.build import BuildOptions, build
    from edge.parity.evaluate import run_eval
    from edge.fileio import atomic_write
    from tools.measure_text_tolerances import _cpu

    trained = Path(converters.__file__).parent / "data" / "tiny_trained"
    t0, load = time.time(), os.getloadavg()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes.split(","):
            art = build(trained, Path(tmp) / recipe, BuildOptions(recipe=recipe, prefill=(16, 64), context=320,
                                                                   modalities=("text", "vision", "audio")))
            report = run_eval(art, trained, text=trained / "heldout.txt")
            rows[recipe] = {"bundle_bytes": (art / "model.litertlm").stat().st_size,
                            "decoder_weights": report["decoder_weights"], "ok": report["ok"],
                            "eval": report["rows"], **_speeds(art)}
    record = {"tool": "tools/eval_recipes.py", "command": " ".join(["python", *sys.argv]),
              "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": _cpu(), "threads": "library defaults (engine CPU backend, simulator LiteRT)",
              "load_avg_start": load, "load_avg_end": os.getloadavg(), "wall_s": round(time.time() - t0, 1),
              "checkpoint": "converters/data/tiny_trained", "text": "converters/data/tiny_trained/heldout.txt",
              "recipes": rows}
    atomic_write(args.out, json.dumps(record, indent=1) + "\n")
    print(table(record))
    return 0


def table(record: dict) -> str:
    lines = ["| recipe | decoder weights | bundle | ppl (HF → ours) | top-1 | KL mean | image top-1 | audio top-1 "
             "| decode tok/s engine / simulator | verdict |", "|" + "---|" * 10]
    for name, r in record["recipes"].items():
        text = r["eval"]["held-out text"]
        media = {k: v for k, v in r["eval"].items() if k != "held-out text"}
        img = [v["top1"] for k, v in media.items() if k.startswith("image")]
        aud = [v["top1"] for k, v in media.items() if k.startswith("audio")]
        pct = lambda xs: f"{sum(xs) / len(xs):.0%}" if xs else "–"  # noqa: E731
        lines.append(f"| {name} | {r['decoder_weights']} | {r['bundle_bytes'] / 2**20:.2f} MiB | "
                     f"{text['ppl_ref']:.2f} → {text['ppl_art']:.2f} | {text['top1']:.1%} | {text['kl_mean']:.2g} | "
                     f"{pct(img)} | {pct(aud)} | {r['engine']['decode_tok_s']:.0f} / {r['simulator']['decode_tok_s']:.0f} | "
                     f"{'pass' if r['ok'] else 'FAIL'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
