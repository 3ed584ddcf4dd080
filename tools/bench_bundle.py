"""model.litertlm in Google's LiteRT-LM runtime vs our simulator: sizes, speed, scoring gap (JSON).

For each recipe: build the artifact directory (+ bundle) of a checkpoint, then
- sizes: the bundle and each section;
- speed: the same raw prompt, greedy, in the runtime (litert_lm.Engine, CPU, its own
  BenchmarkInfo) and in our simulator run on the bundle (edge.runtime, its own metrics),
  the same thread count, best of --repeats. The runtime counts prefill as the prompt's
  prefill calls; our simulator's prefill time also holds the first decode (TTFT).
- scoring (fp32): run_text_scoring as called, and with the workaround of a second prefill
  of the last prompt piece, against HF's log-likelihoods (mean |difference| per token).

Usage: python tools/bench_bundle.py [--ckpt DIR] [--recipes fp32,int8,int4] [--json OUT]
The default checkpoint is the trained tiny model (converters/data/tiny_trained).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = ("The for statement is used to iterate over the elements of a sequence (such as a string, tuple or "
          "list) or other iterable object. The expression list is evaluated once; it should yield an iterable.")
SCORED = [("The while statement is used for repeated execution", " as long as an expression is true."),
          ("A class definition defines a class object.", " The inheritance list usually gives a list of base classes.")]


def _runtime_speed(bundle: Path, prompt: str, n: int, threads: int, repeats: int) -> dict:
    import litert_lm
    from litert_lm import interfaces

    engine = litert_lm.Engine(str(bundle), backend=litert_lm.Backend.CPU(thread_count=threads), enable_benchmark=True)
    best = None
    try:
        for _ in range(repeats):
            s = engine.create_session(apply_prompt_template=False, max_output_tokens=n,
                                      sampler_config=interfaces.SamplerConfig(top_k=1, top_p=1.0, temperature=1.0))
            s.run_prefill([prompt])
            s.run_decode()
            b = s.get_benchmark_info()
            s.close()
            run = {"prefill_tokens": b.last_prefill_token_count, "prefill_tok_s": b.last_prefill_tokens_per_second,
                   "decode_tokens": b.last_decode_token_count, "decode_tok_s": b.last_decode_tokens_per_second,
                   "ttft_s": b.time_to_first_token_in_second, "init_s": b.init_time_in_second}
            if best is None or run["decode_tok_s"] > best["decode_tok_s"]:
                best = run
    finally:
        engine.close()
    return best


def _simulator_speed(bundle: Path, prompt: str, n: int, threads: int, repeats: int) -> dict:
    from edge.runtime.session import load_pipeline
    from edge.runtime.pipeline import GenerationConfig

    pipeline, _ = load_pipeline(bundle, num_threads=threads)
    best = None
    try:
        for _ in range(repeats):
            m = pipeline.generate(prompt, config=GenerationConfig(max_tokens=n, apply_template=False)).metrics.to_dict()
            if best is None or (m["decode_tokens_per_s"] or 0) > (best["decode_tokens_per_s"] or 0):
                best = m
    finally:
        pipeline.close()
    return best


def _scoring(bundle: Path, ckpt: Path) -> dict:
    import litert_lm

    from converters.reference import Reference

    import sentencepiece as spm

    ref = Reference(ckpt)
    # The bundle's decoder scores the tokenizer's ids only: normalise the reference over the same set.
    vocab = spm.SentencePieceProcessor(model_file=str(bundle.parent / "tokenizer.model")).get_piece_size()
    engine = litert_lm.Engine(str(bundle), backend=litert_lm.Backend.CPU())
    out = []
    try:
        for prompt, target in SCORED:
            ids = [engine.bos_token_id] + engine.tokenize(prompt)
            tgt = engine.tokenize(target)
            logits = ref.logits(ids + tgt, vocab)[len(ids) - 1: -1].astype(np.float64)
            logits -= logits.max(-1, keepdims=True)
            true = (logits - np.log(np.exp(logits).sum(-1, keepdims=True)))[np.arange(len(tgt)), tgt]
            runs = {}
            for name, extra in (("as_called", ()), ("second_prefill_of_last_piece", (engine.detokenize(ids[-1:]),))):
                s = engine.create_session(apply_prompt_template=False)
                for text in (prompt, *extra):
                    s.run_prefill([text])
                runs[name] = np.array(s.run_text_scoring([target]).token_scores[0])
                s.close()
            out.append({"prompt_tokens": len(ids), "target_tokens": len(tgt),
                        **{f"mean_abs_gap_{k}": float(np.mean(np.abs(v - true))) for k, v in runs.items()},
                        "mean_signed_gap_as_called": float(np.mean(runs["as_called"] - true))})
    finally:
        engine.close()
    return {"per_prompt": out}


def main(argv=None) -> int:
    from converters.build import BuildOptions, build
    from edge.format.litertlm import read_bundle

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=str(REPO / "converters" / "data" / "tiny_trained"))
    p.add_argument("--recipes", default="fp32,int8,int4")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    ckpt = Path(args.ckpt)
    report = {"checkpoint": str(ckpt), "threads": args.threads, "new_tokens": args.new_tokens, "recipes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes.split(","):
            t0 = time.perf_counter()
            out = build(ckpt, Path(tmp) / recipe, BuildOptions(recipe=recipe, prefill=(8, 16), context=96))
            bundle = out / "model.litertlm"
            b = read_bundle(bundle)
            entry = {"build_s": time.perf_counter() - t0, "bundle_bytes": b.size,
                     "sections": [{"type": s.data_type, "model_type": s.model_type, "bytes": s.size} for s in b.sections],
                     "runtime": _runtime_speed(bundle, PROMPT, args.new_tokens, args.threads, args.repeats),
                     "simulator": _simulator_speed(bundle, PROMPT, args.new_tokens, args.threads, args.repeats)}
            if recipe == "fp32":
                entry["scoring"] = _scoring(bundle, ckpt)
            report["recipes"][recipe] = entry
            print(f"{recipe}: {b.size / 2**20:.2f} MiB; runtime prefill {entry['runtime']['prefill_tok_s']:.0f} tok/s, "
                  f"decode {entry['runtime']['decode_tok_s']:.0f} tok/s; simulator {json.dumps(entry['simulator'])}",
                  file=sys.stderr)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
