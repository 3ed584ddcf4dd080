#!/usr/bin/env python
"""One benchmark run, one record: build a checkpoint, then time the engine and the simulator on
what was built, side by side in one run, and write the record with every field the speed issue
asks for into benchmarks/ (then refresh BENCHMARKS.md).

    .venv/bin/python tools/bench_record.py build/bench/e2b-random --shape E2B --recipe int4 \\
        --threads 1 --prefill 128,1024 --context 4096
    .venv/bin/python tools/bench_record.py --smoke      # the tiny trained model, seconds

Stages, each a child process so each peak RSS is its own: `gemma3n-edge build` (tools/bench_build.py:
wall time and the kernel's peak RSS), then tools/bench.py (the simulator and LiteRT-LM's engine,
the decode bound from this machine's copy bandwidth). Nothing here is a timed test: the machine
is shared, so every record carries the load average and the CPU's kernel-relevant flags.
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
sys.path.insert(0, str(ROOT / "tools"))
BENCHMARKS = ROOT / "benchmarks"


def _get(d: dict | None, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def record_of(args, build: dict, bench: dict, bundle_bytes: int | None) -> dict:
    from benchutil import machine

    sim, eng = _get(bench, "systems", "simulator") or {}, _get(bench, "systems", "litertlm") or {}
    first = str(min(args.prefill))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    # Dirty = code or docs changed; the records and the BENCHMARKS.md each record rewrites do not count.
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                 ":!BENCHMARKS.md", ":!benchmarks"], capture_output=True,
                                text=True, cwd=ROOT).stdout.strip())
    m = machine()
    return {
        "tool": "tools/bench_record.py", "command": " ".join(["tools/bench_record.py", *args.argv]),
        "commit": commit + ("+dirty" if dirty else ""), "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": {k: m[k] for k in ("cpu", "cores", "ram_gib")}, "cpu_flags": m["cpu_flags"],
        "shape": args.shape, "recipe": args.recipe, "modalities": args.modalities.split(","),
        "threads": args.threads, "context": args.context, "prefill": args.prefill,
        "build": {"wall_s": build.get("wall_s"), "peak_rss_mib": build.get("peak_rss_mib")},
        "bundle_bytes": bundle_bytes,
        "engine": {"prefill_tok_s": _get(eng, "prefill", first, "prefill_tok_s"),
                   "decode_tok_s": _get(eng, "decode", "tok_s"), "peak_rss_mib": eng.get("peak_rss_mib"),
                   "error": eng.get("error") or eng.get("skipped")},
        "simulator": {"prefill_tok_s": _get(sim, "prefill", first, "prefill_tok_s"),
                      "decode_tok_s": _get(sim, "decode", "tok_s"), "peak_rss_mib": sim.get("peak_rss_mib"),
                      "error": sim.get("error")},
        "bound": {"decode_tok_s": _get(bench, "physics", "artifact_decode_bound_tok_s"),
                  "bandwidth_bytes_per_s": _get(bench, "physics", "bandwidth_bytes_per_s")},
        "load_avg": {"build_end": build.get("load_avg"), "engine": [eng.get("loadavg_start"), eng.get("loadavg_end")],
                     "simulator": [sim.get("loadavg_start"), sim.get("loadavg_end")]},
        "details": {"build_stages": build.get("stages"), "bench": bench},
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", help="checkpoint directory to build")
    p.add_argument("--shape", help="label of the checkpoint's shape in the record (E2B, E4B, E4B->E2B, tiny)")
    p.add_argument("--recipe", default="int4")
    p.add_argument("--modalities", default="text,vision,audio")
    p.add_argument("--slice", help="build --slice (e.g. E2B from an E4B checkpoint)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prefill", default="128,1024")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--work", default=str(ROOT / "build/bench/record"), help="where the artifacts go (replaced)")
    p.add_argument("--out", help="record file (default: benchmarks/<shape>-<recipe>-<threads>t-<date>.json)")
    p.add_argument("--smoke", action="store_true", help="the tiny trained model, a small context: checks the tool")
    args = p.parse_args(argv)
    args.argv = argv
    if args.smoke:
        args.checkpoint = args.checkpoint or str(ROOT / "converters/data/tiny_trained")
        args.shape, args.context, args.prefill, args.decode_tokens = args.shape or "tiny", 320, "16,64", 8
    if not args.checkpoint or not args.shape:
        p.error("give a checkpoint and --shape (or --smoke)")
    args.prefill = sorted({int(x) for x in args.prefill.split(",") if x.strip()})

    from bench_build import run_build

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    build_args = [args.checkpoint, "--out", str(work), "--recipe", args.recipe, "--modalities", args.modalities,
                  "--prefill", ",".join(map(str, args.prefill)), "--context", str(args.context)]
    if args.slice:
        build_args += ["--slice", args.slice]
    print(f"build: gemma3n-edge build {' '.join(build_args)}", file=sys.stderr, flush=True)
    build = run_build(build_args, 0.2)
    build["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    if build["exit_code"] != 0:
        raise SystemExit("build failed:\n" + "\n".join(build["log_tail"]))
    bench_json = work.parent / f"{work.name}.bench.json"
    print("bench: tools/bench.py --litertlm", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, str(ROOT / "tools/bench.py"), str(work), "--litertlm", "--threads",
                           str(args.threads), "--prefill", ",".join(map(str, args.prefill)), "--decode-tokens",
                           str(args.decode_tokens), "--json", str(bench_json)],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    bench = json.loads(bench_json.read_text()) if bench_json.is_file() else {"error": f"bench exit {proc.returncode}"}
    bundle = work / "model.litertlm"
    record = record_of(args, build, bench, bundle.stat().st_size if bundle.is_file() else None)
    out = Path(args.out) if args.out else BENCHMARKS / (
        f"{args.shape.replace('>', '').replace('/', '-')}-{args.recipe}-{args.threads}t-"
        f"{time.strftime('%Y%m%d-%H%M', time.gmtime())}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "details"}, indent=1))
    print(f"record: {out}", file=sys.stderr)
    if out.parent.resolve() == BENCHMARKS.resolve():
        from benchmarks_md import write

        write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
