#!/usr/bin/env python
"""Speed and memory of one artifact directory in three systems, side by side, as JSON.

    .venv/bin/python tools/bench.py DIR --json F [--reference CKPT] [--litertlm]
                                    [--prefill 128,1024] [--decode-tokens 32] [--threads 2]

Systems, each in its own subprocess (so each peak RSS is its own: the kernel's ru_maxrss of
the child, which counts memory-mapped weight pages it touched):
- `simulator`: our torch-free runtime (edge/runtime) on the artifact directory;
- `litertlm`: Google's LiteRT-LM engine (litert_lm.Benchmark, CPU/XNNPACK) on DIR/model.litertlm,
  its own benchmark mode (the prompt is padded with token 0 to the prefill length);
- `hf`: transformers' Gemma3nForConditionalGeneration on the checkpoint the artifacts were built
  from, in bf16 on the CPU (an fp32 E2B is 21 GB: it does not fit next to anything else in 24 GiB),
  `logits_to_keep=1` so prefill computes only the last position's logits, as the others do.
Per system: prefill tok/s and time to first token at each prompt length (a fresh cache each time;
one warm-up call first; best of `--repeats`, every run kept), then decode tok/s over
`--decode-tokens` greedy steps after the first prompt length, from the median step (the cores
are shared: the median ignores a neighbour's burst; the mean is kept too). Token ids are random
text ids (the speed of a decoder does not depend on them).

Physics: bytes one decode step reads (edge.bench.decode_traffic: decoder weights, the embedding
and PLE rows, the KV caches at the lowered context) / this machine's copy bandwidth
(edge.bench.measure_bandwidth with the systems' thread count, best of 5) = the decode bound; each system's
fraction of it is reported (HF reads bf16 weights: its own bound uses its own weight bytes).
Other processes on this 2-core machine share the cores and the memory bus: the load average at
the start and end of each run is recorded with it. With 2 threads on 2 shared cores every parallel
op waits for the thread whose core a neighbour holds (measured: LiteRT-LM decode 5.4 vs 11.8 tok/s,
HF decode 0.8 vs 3.4 tok/s between two runs minutes apart); `--threads 1` gave spreads of a few
percent on the same machine, so compare systems at 1 thread there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SEED = 0


def _mem() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k = line.split(":", 1)[0]
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k + "_mib"] = round(int(line.split()[1]) / 1024, 1)
    return out


def prompt_ids(n: int, bos: int, text_vocab: int) -> list[int]:
    """bos + n - 1 random text ids from the middle of the vocabulary (Gemma's special tokens sit at
    its two ends: 0-106 and 255999/256000 of 262144)."""
    import numpy as np

    rng = np.random.default_rng([SEED, n])
    return [bos] + [int(x) for x in rng.integers(text_vocab // 8, text_vocab * 15 // 16, size=n - 1)]


# ----------------------------------------------------------------------------- workers


def _best(runs: list[dict], key: str) -> dict:
    """The run with the shortest `key` time, plus every run's value (noise shows as spread)."""
    best = min(runs, key=lambda r: r[key])
    return {**best, f"all_{key}": [round(r[key], 4) for r in runs]}


def _decode_summary(steps: list[float], after: int) -> dict:
    """tok/s from the median step (robust to a neighbour's burst on the shared cores) and the mean."""
    import statistics

    med = statistics.median(steps)
    return {"tokens": len(steps), "after_prompt": after, "seconds": sum(steps), "median_step_s": med,
            "tok_s": 1 / med, "mean_tok_s": len(steps) / sum(steps)}


def worker_simulator(args) -> dict:
    import numpy as np

    from edge.runtime.session import load_pipeline
    from edge.runtime.pipeline import GenerationConfig

    t0 = time.perf_counter()
    pipe, manifest = load_pipeline(args.dir, verify=False, num_threads=args.threads)
    load_s = time.perf_counter() - t0
    bos, vocab = manifest.model.tokens.bos, manifest.model.vocab_size_per_layer_input
    one = GenerationConfig(max_tokens=1, apply_template=False)
    t0 = time.perf_counter()
    pipe.generate(prompt_ids=prompt_ids(min(args.prefill), bos, vocab), config=one)  # warm-up: first-call costs
    warmup_s = time.perf_counter() - t0
    prefill = {}
    for n in args.prefill:
        runs = []
        for _ in range(args.repeats):
            m = pipe.generate(prompt_ids=prompt_ids(n, bos, vocab), config=one).metrics
            runs.append({"tokens": n, "ttft_s": m.ttft_s, "prefill_s": m.prefill_s,
                         "prefill_tok_s": m.prefill_tokens_per_s, "calls": m.prefill_calls})
        prefill[str(n)] = _best(runs, "prefill_s")
    # Decode: after the first prompt length, greedy steps straight through the executor (a random
    # model may sample a stop token at once; the pipeline would stop there).
    n = min(args.prefill)
    r = pipe.generate(prompt_ids=prompt_ids(n, bos, vocab), config=one)
    token, pos, steps = r.token_ids[-1], n, []
    for _ in range(args.decode_tokens):
        t0 = time.perf_counter()
        logits = pipe.executor.decode(*pipe.embed([token]), pos)
        token, pos = int(np.argmax(logits.reshape(-1))), pos + 1
        steps.append(time.perf_counter() - t0)
    pipe.close()
    return {"load_s": load_s, "warmup_s": warmup_s, "prefill": prefill, "decode": _decode_summary(steps, n),
            "prefill_definition": "prompt tokens / (chunked prefill of all but the last + decode of the last), "
                                  "as edge.runtime.metrics; best of --repeats", "memory": _mem()}


def worker_litertlm(args) -> dict:
    import statistics

    import litert_lm

    bundle = Path(args.dir) / "model.litertlm"
    if not bundle.is_file():
        return {"skipped": f"{bundle} does not exist (build with the bundle writer)"}
    litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
    cpu = litert_lm.Backend.CPU(thread_count=args.threads)
    runs: dict[int, list] = {}
    # The engine writes its XNNPACK weight cache beside the model unless told otherwise: keep the
    # artifact directory clean. The warm-up run fills the cache, as a phone's first launch would.
    cache = args.cache_dir or tempfile.mkdtemp(prefix="litertlm-cache-")
    try:
        # A warm-up run (engine init, XNNPACK weight packing), then --repeats runs per prompt length
        # (the benchmark API builds a new engine per run).
        for n in [min(args.prefill)] + [n for n in args.prefill for _ in range(args.repeats)]:
            info = litert_lm.Benchmark(str(bundle), backend=cpu, prefill_tokens=n, decode_tokens=args.decode_tokens,
                                       max_num_tokens=args.context, cache_dir=cache).run()
            runs.setdefault(n, []).append(info)
    finally:
        if not args.cache_dir:
            import shutil

            shutil.rmtree(cache, ignore_errors=True)
    warmup = runs[min(args.prefill)].pop(0)
    prefill, decode_rates = {}, []
    for n in args.prefill:
        rows = []
        for info in runs[n]:
            row = {"tokens": info.last_prefill_token_count, "ttft_s": info.time_to_first_token_in_second or None,
                   "prefill_tok_s": info.last_prefill_tokens_per_second, "init_s": info.init_time_in_second,
                   "prefill_s": info.last_prefill_token_count / max(info.last_prefill_tokens_per_second, 1e-9),
                   "decode_tok_s": info.last_decode_tokens_per_second, "decode_tokens": info.last_decode_token_count}
            rows.append(row)
            if n == min(args.prefill) and info.last_decode_tokens_per_second:
                decode_rates.append(info.last_decode_tokens_per_second)
        prefill[str(n)] = _best(rows, "prefill_s")
    decode = statistics.median(decode_rates) if decode_rates else None
    for p in prefill.values():
        if not p["ttft_s"] and decode:
            # Runtime 0.18.1 reports no TTFT (and decodes no token) in its benchmark runs at 1024
            # prompt tokens: derive it as the prefill time plus one decode step (the runtime's own
            # protocol), the step timed in the runs after the first prompt length.
            p["ttft_derived_s"] = p["prefill_s"] + 1 / decode
    return {"prefill": prefill,
            "decode": {"tokens": args.decode_tokens, "after_prompt": min(args.prefill), "tok_s": decode,
                       "all_tok_s": [round(x, 3) for x in decode_rates]},
            "warmup_init_s": warmup.init_time_in_second,
            "prefill_definition": "LiteRT-LM's own benchmark info (last prefill turn); best of --repeats, decode = "
                                  "median over the runs after the first prompt length", "memory": _mem()}


def worker_hf(args) -> dict:
    import torch
    from transformers import Gemma3nForConditionalGeneration
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = Gemma3nForConditionalGeneration.from_pretrained(args.reference, dtype=torch.bfloat16).eval()
    lm = model.model.language_model
    # transformers leaves the weights memory-mapped from the safetensors files: page-cache pages that a
    # neighbour's allocation can evict, after which every decode step reads the disk. Copy what a step
    # reads into private memory (the PLE table stays mapped: a row per token).
    with torch.no_grad():
        for p in lm.parameters():
            if p is not lm.embed_tokens_per_layer.weight:
                p.data = p.data.clone()
    load_s = time.perf_counter() - t0
    bos, vocab = model.config.text_config.bos_token_id, model.config.text_config.vocab_size_per_layer_input
    # Weight bytes one decode step reads: every language-model weight except the two lookup
    # tables (a row each), plus embed_tokens once more as the tied lm_head.
    table = {id(lm.embed_tokens_per_layer.weight), id(lm.embed_tokens.weight)}
    weights = sum(p.numel() * p.element_size() for p in lm.parameters() if id(p) not in table)
    weights += lm.embed_tokens.weight.numel() * lm.embed_tokens.weight.element_size()

    def prefill_once(n: int):
        ids = torch.tensor([prompt_ids(n, bos, vocab)])
        t = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        token = int(out.logits[0, -1].argmax())
        return time.perf_counter() - t, out, token

    with torch.inference_mode():
        warmup_s = prefill_once(min(args.prefill))[0]
        prefill = {}
        for n in args.prefill:
            runs = []
            for _ in range(args.repeats):
                s = prefill_once(n)[0]
                runs.append({"tokens": n, "ttft_s": s, "prefill_s": s, "prefill_tok_s": n / s})
            prefill[str(n)] = _best(runs, "prefill_s")
        _, out, token = prefill_once(min(args.prefill))
        past, steps = out.past_key_values, []
        for _ in range(args.decode_tokens):
            t0 = time.perf_counter()
            out = model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past, token = out.past_key_values, int(out.logits[0, -1].argmax())
            steps.append(time.perf_counter() - t0)
    return {"load_s": load_s, "warmup_s": warmup_s, "dtype": "bfloat16", "prefill": prefill,
            "decode": _decode_summary(steps, min(args.prefill)), "weight_bytes_per_decode_token": weights,
            "prefill_definition": "one forward over the prompt with logits_to_keep=1 (= TTFT); best of --repeats",
            "memory": _mem()}


def worker_bandwidth(args) -> dict:
    from edge.bench import measure_bandwidth

    """Copy bandwidth with 1 thread and with the systems' thread count (the decode bound uses the latter)."""
    out = {"1": measure_bandwidth(args.bandwidth_bytes, threads=1)}
    if args.threads > 1:
        out[str(args.threads)] = measure_bandwidth(args.bandwidth_bytes, threads=args.threads)
    return out


WORKERS = {"simulator": worker_simulator, "litertlm": worker_litertlm, "hf": worker_hf, "bandwidth": worker_bandwidth}


# ----------------------------------------------------------------------------- parent


def _run_worker(system: str, args) -> dict:
    """Run one system in a child process; its JSON plus the kernel's peak RSS of the child."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, __file__, "--worker", system, "--out", str(out), args.dir,
               "--prefill", ",".join(map(str, args.prefill)), "--decode-tokens", str(args.decode_tokens),
               "--threads", str(args.threads), "--context", str(args.context),
               "--bandwidth-bytes", str(args.bandwidth_bytes), "--repeats", str(args.repeats)]
        if args.reference:
            cmd += ["--reference", args.reference]
        if args.cache_dir:
            cmd += ["--cache-dir", args.cache_dir]
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        stderr = proc.stderr.read()
        _, status, ru = os.wait4(proc.pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        result = json.loads(out.read_text()) if out.is_file() else {}
    if rc != 0:
        result["error"] = f"exit {rc}: " + "\n".join(stderr.strip().splitlines()[-8:])
    result.update(peak_rss_mib=round(ru.ru_maxrss / 1024, 1), wall_s=round(wall, 1),
                  loadavg_start=[round(x, 2) for x in load0], loadavg_end=[round(x, 2) for x in os.getloadavg()])
    print(f"  {system}: {wall:.0f} s, peak RSS {ru.ru_maxrss / 1024:.0f} MiB"
          + (f"  ERROR {result['error']}" if rc else ""), file=sys.stderr, flush=True)
    return result


def _ratio(a, b):
    return (a / b) if (a and b) else None


def _ratios(systems: dict, prefill: list[int]) -> dict:
    def metric(s: str, key: str, n: int | None = None):
        r = systems.get(s) or {}
        if n is None:
            return (r.get("decode") or {}).get("tok_s")
        p = (r.get("prefill") or {}).get(str(n)) or {}
        return p.get(key) or (p.get("ttft_derived_s") if key == "ttft_s" else None)

    out = {}
    for a, b in (("simulator", "hf"), ("litertlm", "hf"), ("simulator", "litertlm")):
        if a in systems and b in systems:
            d = {"decode_tok_s": _ratio(metric(a, ""), metric(b, ""))}
            for n in prefill:
                d[f"prefill_{n}_tok_s"] = _ratio(metric(a, "prefill_tok_s", n), metric(b, "prefill_tok_s", n))
                d[f"ttft_{n}_s"] = _ratio(metric(a, "ttft_s", n), metric(b, "ttft_s", n))
            d["peak_rss"] = _ratio(systems[a].get("peak_rss_mib"), systems[b].get("peak_rss_mib"))
            out[f"{a}/{b}"] = d
    return out


def _physics(args, systems: dict, bandwidth: dict) -> dict:
    from edge.bench import decode_traffic

    traffic = decode_traffic(args.dir)
    bw = bandwidth[str(args.threads)]["bytes_per_s"]  # the bus share the systems' threads can pull
    bound = traffic.bound_tok_s(bw)
    out = {"decode_traffic": traffic.to_dict(), "bandwidth_bytes_per_s": bw, "bandwidth": bandwidth,
           "artifact_decode_bound_tok_s": bound, "fraction_of_bound": {}}
    for s in ("simulator", "litertlm"):
        tok_s = ((systems.get(s) or {}).get("decode") or {}).get("tok_s")
        if tok_s:
            out["fraction_of_bound"][s] = tok_s / bound
    hf = systems.get("hf") or {}
    if hf.get("weight_bytes_per_decode_token") and (hf.get("decode") or {}).get("tok_s"):
        hf_bound = bw / hf["weight_bytes_per_decode_token"]  # KV at a short context: negligible next to bf16 weights
        out["hf_bf16_decode_bound_tok_s"] = hf_bound
        out["fraction_of_bound"]["hf"] = hf["decode"]["tok_s"] / hf_bound
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", help="artifact directory (gemma3n-edge build output)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--reference", help="the checkpoint the artifacts were built from: also run transformers (bf16)")
    p.add_argument("--litertlm", action="store_true", help="also run LiteRT-LM's engine on DIR/model.litertlm")
    p.add_argument("--no-simulator", action="store_true", help="skip our simulator")
    p.add_argument("--prefill", default="128,1024", help="prompt lengths to time prefill at (default 128,1024)")
    p.add_argument("--decode-tokens", type=int, default=32, help="greedy decode steps to time (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="prefill runs per length; the best counts (default 3)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads per system")
    p.add_argument("--context", type=int, default=None, help="LiteRT-LM max tokens (default: the manifest's context)")
    p.add_argument("--cache-dir", help="LiteRT-LM cache dir (XNNPACK weight cache)")
    p.add_argument("--bandwidth-bytes", type=int, default=1 << 30, help="array size of the bandwidth copy (1 GiB)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.prefill = sorted({int(x) for x in args.prefill.split(",") if x.strip()})

    from edge.format.manifest import read_manifest

    manifest = read_manifest(args.dir)
    args.context = args.context or manifest.model.context_length
    if max(args.prefill) > args.context or min(args.prefill) + args.decode_tokens > args.context:
        p.error(f"--prefill/--decode-tokens do not fit the context ({args.context})")

    if args.worker:
        result = WORKERS[args.worker](args)
        Path(args.out).write_text(json.dumps(result, indent=2))
        return 0

    from edge.bench import compare_to_google, component_sizes

    print("bandwidth ...", file=sys.stderr, flush=True)
    bandwidth = _run_worker("bandwidth", args)
    systems = {}
    if not args.no_simulator:
        systems["simulator"] = _run_worker("simulator", args)
    if args.litertlm:
        systems["litertlm"] = _run_worker("litertlm", args)
    if args.reference:
        systems["hf"] = _run_worker("hf", args)
    sizes = component_sizes(args.dir)
    doc = {
        "artifacts": str(args.dir), "reference": args.reference, "recipe": manifest.recipe,
        "model": {"layers": manifest.model.num_hidden_layers, "context": manifest.model.context_length,
                  "prefill_lengths": list(manifest.model.prefill_lengths)},
        "settings": {"prefill": args.prefill, "decode_tokens": args.decode_tokens, "threads": args.threads,
                     "machine": f"{os.cpu_count()} cores, shared with other processes (see loadavg per system)"},
        "systems": systems, "ratios": _ratios(systems, args.prefill),
        "physics": _physics(args, systems, bandwidth),
        "sizes": sizes, "google_bundle": compare_to_google(sizes),
    }
    text = json.dumps(doc, indent=2)
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.json)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
