#!/usr/bin/env python
"""Where Google's LiteRT-LM engine spends a decode step on a bundle: a sampled CPU profile.

LiteRT-LM 0.18.1 exposes no per-op profiler to Python or C (docs/notes/engine_speed_research.md
section 3), so this samples the engine with Linux `perf` and names what runs: int4/int8 matmuls,
fp32 matmuls (attention), copies, fills, transposes, elementwise ops. `liblitert-lm.so` exports
only some of XNNPACK's kernels by name; a sample at a bare address is classified by the
instructions around it (objdump): AMX/VNNI dot products, broadcast FMAs, non-temporal stores...
The engine runs in a child process (a warm-up run first, so XNNPACK's weight cache is packed);
`perf record` attaches only for the measured run (load from the warm cache, a short prefill, then
--decode-tokens steps, so decode dominates the samples: `decode_share_of_samples` says how much).
Shares are grouped by kernel family and written as one JSON record.

    .venv/bin/python tools/profile_decode.py build/bench/e2b-int4pc/model.litertlm --threads 1 \\
        --out benchmarks/profile-E2B-int4-pc-1t.json

Needs `perf` (Debian's linux-perf), `objdump` (binutils) and kernel.perf_event_paranoid <= 2 (the
default), which lets a user profile its own processes. Not a timed test: the shares are what the
record is for; the machine's load is recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

# Kernel families of named symbols, first match wins. XNNPACK microkernel names say the datatypes:
# qd8_f32_qc4w = int8-quantized activations x int4 per-channel weights, qb4w = int4 blockwise.
FAMILIES: list[tuple[str, str]] = [
    ("int4/int8 matmul", r"xnn_qd8_f(32|16)_q[cb][48]w_(gemm|igemm)"),
    ("fp32 matmul", r"xnn_f32_(gemm|igemm|ppmm)|xnn_f(16|32)_f16_|xnn_f16_(gemm|igemm)"),
    ("activation quantization", r"xnn_(f32_qd8|f32_qs8|f32_qdu8)|xnn_x8_packq"),
    ("exp (softmax, gelu, tanh)", r"raddstoreexpminusmax|vscaleexp|expminus|softmax|vexp|tanh|gelu"),
    ("copy / pack", r"mem(cpy|move)|xnn_x(8|16|32|64)_(copy|packw)|copy|pack"),
    ("fill", r"memset|fill"),
    ("transpose", r"transpose"),
    ("fp32 elementwise / reduce", r"xnn_f32_(v|r)"),
    ("tflite builtin kernels (not delegated)", r"tflite::ops::|optimized_ops|reference_ops"),
]
KERNEL = "kernel (page faults, scheduling)"

# LiteRT-LM's library exports few of XNNPACK's kernels by name, so most samples are bare
# addresses. Their instructions say what they are: AMX tiles or VNNI dot products are the int8
# kernels of int4/int8 matmuls (with gf2p8affine unpacking int4), broadcast + FMA is an fp32 GEMM,
# non-temporal stores are large memcpys, prefetchw loops are memsets. First match wins.
INSTRUCTIONS: list[tuple[str, set[str]]] = [
    ("int4/int8 matmul", {"tdpbssd", "tdpbusd", "tileloadd", "tilestored", "tilezero", "vpdpbusd", "vpdpbssd",
                          "vpdpwssd", "vgf2p8affineqb"}),
    ("copy / pack", {"vmovntps", "vmovntdq", "movntdq", "movnti"}),  # large memcpys
    ("fill", {"prefetchw"}),
    ("transpose", {"vmaskmovps", "vunpcklps", "vunpckhps", "vpermt2ps", "vshufps", "vpermt2d"}),
    ("fp16 convert", {"vcvtph2ps", "vcvtps2ph"}),
    ("exp (softmax, gelu, tanh)", {"vscalefps", "vrndscaleps", "vexp2ps"}),
]
FMA = {"vfmadd231ps", "vfmadd213ps", "vfmadd132ps"}
VECTOR_MATH = FMA | {"vmulps", "vaddps", "vmaxps", "vminps", "vsubps", "vdivps", "vsqrtps", "vrsqrt14ps"}
VECTOR_MOVES = {"vmovups", "vmovaps", "vmovdqu", "vmovdqu32", "vmovdqu64", "vmovdqa64", "vinsertf128",
                "vinsertf32x4"}


def family(symbol: str, dso: str) -> str:
    if dso.startswith("[kernel"):  # the kernel's own copies (page faults) are not the graph's copies
        return KERNEL
    return next((name for name, pattern in FAMILIES if re.search(pattern, symbol)), "other")


def family_of_code(mnemonics: list[str]) -> str:
    """The kernel family of a bare address, from the instructions around it."""
    seen = set(mnemonics)
    for name, marks in INSTRUCTIONS:
        if seen & marks:
            return name
    if seen & FMA and "vbroadcastss" in seen:
        return "fp32 matmul"
    if seen & VECTOR_MATH:
        return "fp32 elementwise / reduce"
    if sum(m in VECTOR_MOVES for m in mnemonics) >= 3:  # vector loads and stores, no math: copying or packing
        return "copy / pack"
    return "other"


def _mnemonics(objdump: str, lib: str, address: int, reach: int = 64) -> list[str]:
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", f"--start-address={address - reach}",
                           f"--stop-address={address + reach}", lib], capture_output=True, text=True).stdout
    return [parts[1].split()[0] for line in text.splitlines()
            if len(parts := line.split("\t")) > 1 and parts[1].strip()]


def parse_report(text: str) -> list[dict]:
    """Rows of `perf report --stdio --no-children --sort dso,sym -F overhead,dso,sym`: share, dso, symbol."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*\S)\s*$", line)
        if m:
            pct, dso, level, sym = m.groups()
            if level == "k":
                dso = "[kernel]"
            rows.append({"share": float(pct) / 100.0, "dso": dso, "symbol": sym})
    if not rows:
        raise ValueError("perf report printed no sample rows: was anything recorded?")
    return sorted(rows, key=lambda r: -r["share"])


def classify(rows: list[dict], libs: dict[str, str], min_share: float = 2e-4) -> None:
    """Set each row's family: by name, or for a bare address in a known library by its code."""
    objdump = shutil.which("objdump")
    for r in rows:
        r["family"] = family(r["symbol"], r["dso"])
        bare = re.fullmatch(r"0x[0-9a-f]+", r["symbol"])
        if bare and r["family"] == "other" and objdump and r["dso"] in libs and r["share"] >= min_share:
            r["family"] = family_of_code(_mnemonics(objdump, libs[r["dso"]], int(r["symbol"], 16)))
            r["by"] = "instructions"


def summarize(rows: list[dict], step_s: float | None) -> dict:
    fams: dict[str, float] = {}
    for r in rows:
        r.setdefault("family", family(r["symbol"], r["dso"]))
        fams[r["family"]] = fams.get(r["family"], 0.0) + r["share"]
    ordered = dict(sorted(fams.items(), key=lambda kv: -kv[1]))
    return {"families": {k: {"share": round(v, 4),
                             "ms_per_step": round(v * step_s * 1e3, 2) if step_s else None} for k, v in ordered.items()},
            "top_symbols": [{k: (round(v, 4) if k == "share" else v) for k, v in r.items()} for r in rows[:40]]}


CHILD = r"""
import json, sys, time
import litert_lm
litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
bundle, threads, prefill, decode, context, cache = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
cpu = litert_lm.Backend.CPU(thread_count=threads)
litert_lm.Benchmark(bundle, backend=cpu, prefill_tokens=prefill, decode_tokens=2, max_num_tokens=context, cache_dir=cache).run()
print("READY", flush=True)
sys.stdin.readline()
t = time.perf_counter()
info = litert_lm.Benchmark(bundle, backend=cpu, prefill_tokens=prefill, decode_tokens=decode, max_num_tokens=context, cache_dir=cache).run()
wall = time.perf_counter() - t
print(json.dumps({"decode_tok_s": info.last_decode_tokens_per_second, "decode_tokens": info.last_decode_token_count,
                  "prefill_tok_s": info.last_prefill_tokens_per_second, "init_s": info.init_time_in_second,
                  "wall_s": wall}), flush=True)
"""


def profile(bundle: Path, threads: int, prefill: int, decode: int, context: int, freq: int,
            keep: Path | None = None) -> dict:
    perf = shutil.which("perf")
    if not perf:
        raise SystemExit("profile_decode: `perf` not found: install Debian's linux-perf (apt-get install linux-perf)")
    work = Path(tempfile.mkdtemp(prefix="profile-decode-"))
    (work / "cache").mkdir()  # the engine's XNNPACK weight cache, kept out of the artifact directory
    try:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(bundle), str(threads), str(prefill), str(decode),
                                  str(context), str(work / "cache")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        line = child.stdout.readline()
        if line.strip() != "READY":
            child.kill()
            raise SystemExit(f"profile_decode: the engine's warm-up run failed on {bundle} ({line.strip()!r})")
        data = work / "perf.data"
        rec = subprocess.Popen([perf, "record", "-q", "-F", str(freq), "-p", str(child.pid), "-o", str(data)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # perf attaches before the measured run starts
        load = os.getloadavg()
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline()
        if child.wait() != 0 or not line.startswith("{"):
            rec.kill()
            raise SystemExit(f"profile_decode: the engine's measured run failed on {bundle} (exit {child.returncode})")
        result = json.loads(line)
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=120)
        if not data.exists():
            raise SystemExit(f"profile_decode: perf recorded nothing ({err.strip()[-500:]}); "
                             "is kernel.perf_event_paranoid above 2?")
        if keep:
            shutil.copy(data, keep)
        report = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym",
                                 "-F", "overhead,dso,sym"], capture_output=True, text=True, check=True).stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)
    step = 1.0 / result["decode_tok_s"] if result.get("decode_tok_s") else None
    decode_share = (result["decode_tokens"] * step / result["wall_s"]) if step else None
    import litert_lm  # only to find the engine's library: its bare addresses are read with objdump

    lib = Path(litert_lm.__file__).parent / "liblitert-lm.so"
    rows = parse_report(report)
    classify(rows, {lib.name: str(lib)})
    return {"engine": result, "decode_step_s": step, "decode_share_of_samples": decode_share,
            "load_avg": [round(x, 2) for x in load], **summarize(rows, step)}


def main(argv: list[str] | None = None) -> int:
    from benchutil import machine

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", help="a .litertlm, or an artifact directory holding model.litertlm")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prefill", type=int, default=16, help="prompt tokens before decoding (default 16)")
    p.add_argument("--decode-tokens", type=int, default=96)
    p.add_argument("--context", type=int, default=4096, help="the engine's max_num_tokens")
    p.add_argument("--freq", type=int, default=499, help="perf sampling frequency (Hz)")
    p.add_argument("--out", help="write the JSON record here (default: print it)")
    p.add_argument("--keep-perf-data", help="also keep perf's raw samples in this file")
    p.add_argument("--label", default="", help="what this bundle is, for the record (e.g. the commit that built it)")
    args = p.parse_args(argv)
    bundle = Path(args.bundle).resolve()
    if bundle.is_dir():
        bundle = bundle / "model.litertlm"
    if not bundle.is_file():
        raise SystemExit(f"profile_decode: {bundle} does not exist")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    rec = {"tool": "tools/profile_decode.py", "command": " ".join(["tools/profile_decode.py", *(argv or sys.argv[1:])]),
           "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "machine": machine(),
           "label": args.label, "bundle": str(bundle.relative_to(ROOT) if bundle.is_relative_to(ROOT) else bundle),
           "bundle_bytes": bundle.stat().st_size, "threads": args.threads,
           "prefill": args.prefill, "decode_tokens": args.decode_tokens, "context": args.context,
           **profile(bundle, args.threads, args.prefill, args.decode_tokens, args.context, args.freq,
                      Path(args.keep_perf_data) if args.keep_perf_data else None)}
    text = json.dumps(rec, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text if not args.out else f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
