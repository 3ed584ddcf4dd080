#!/usr/bin/env python
"""Ours vs the other Gemma 3n -> .litertlm exporters, on one checkpoint in one run: a JSON record.

    .venv/bin/python tools/bench_peers.py converters/data/tiny_trained --label tiny-trained --recipe fp32 \\
        --modalities text --prefill 8 --context 64
    .venv/bin/python tools/bench_peers.py --table benchmarks/peers-tiny-trained-YYYYmmdd-HHMM.json  # Markdown

Exporters (--exporters picks some): ours (`gemma3n-edge build`); litert-torch (the venv's
`litert_torch.generative.export_hf.export.export`); hf-to-litertlm (PyPI, installed on first use
into build/peers/hf-to-litertlm-venv, never into .venv). Each runs as a child process measured for
wall time and the kernel's peak RSS (wait4) and killed past --timeout: a failure (an error, an
out-of-memory kill, a timeout) is a row of the record with its exit code and stderr tail.

Each bundle is then read with the project's `.litertlm` reader (sections, modalities), loaded by
Google's engine (litert_lm) and asked for greedy continuations of fixed raw prompts, compared
with HF transformers' greedy ids (converters/reference.py `Reference`) on the same prompt ids: how many
tokens agree over --tokens, and the first index where they part. Wall times are only comparable
on an otherwise idle machine: each exporter's row carries the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))
BENCHMARKS = ROOT / "benchmarks"
PEERS = ROOT / "build/peers"
PYTHON = str(ROOT / ".venv/bin/python")
EXPORTERS = ("ours", "litert-torch", "hf-to-litertlm")
H2L_VERSION = "0.1.0"
H2L_VENV = PEERS / "hf-to-litertlm-venv"
# Our recipe -> litert-torch's quantization_recipe. Its export() drops a None argument and falls
# back to its default (dynamic_wi8_afp32), so fp32 must be the string "none".
LITERT_TORCH_RECIPES = {"fp32": "none", "int8": "dynamic_wi8_afp32", "int4": "dynamic_wi4b32_afp32",
                        "int4-pc": "dynamic_wi4c_afp32"}
H2L_RECIPES = {"int8": "int8", "int4": "int4"}  # its --recipe choices; int8 is its default
MODALITY_OF = {"prefill_decode": "text", "vision_encoder": "vision", "audio_encoder_hw": "audio"}


# ----------------------------------------------------------------------------- measuring a child


def _tail(path: Path, n: int = 15) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln[:400] for ln in lines if ln.strip()][-n:]


def _reason(lines: list[str]) -> str | None:
    """The line that says why: a `FAIL ...` line (hf-to-litertlm's one-line verdict), else the last
    line naming an error, else the last line."""
    for pick in (lambda ln: ln.startswith("FAIL"), lambda ln: "Error" in ln or "error:" in ln):
        hits = [ln for ln in lines if pick(ln.strip())]
        if hits:
            return hits[-1].strip()[:300]
    return lines[-1].strip()[:300] if lines else None


def measure(cmd: list[str], timeout: float, log: Path, env: dict | None = None, cwd: Path = ROOT) -> dict:
    """Run `cmd` to the end or to `timeout` (then kill its whole process group): wall time, the
    kernel's peak RSS of the child and the descendants it waited for, exit code, stderr tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    err = log.with_suffix(".stderr.log")
    t0 = time.perf_counter()
    with open(log, "w") as out, open(err, "w") as errf:
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=errf, cwd=cwd, env=env, start_new_session=True)
        except OSError as e:  # no such program: a failed exporter like any other
            return {"exit_code": None, "timed_out": False, "wall_s": 0.0, "peak_rss_mib": None,
                    "stderr_tail": [str(e)], "error": str(e)}
        timed_out = False
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.5)
    proc.returncode = code = os.waitstatus_to_exitcode(status)  # negative: killed by that signal
    tail = _tail(err)
    error = (f"timed out after {timeout:g} s" if timed_out else
             "killed by SIGKILL (out of memory?)" if code == -signal.SIGKILL else
             _reason(tail) if code != 0 else None)
    return {"exit_code": code, "timed_out": timed_out, "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mib": round(ru.ru_maxrss / 1024, 1), "stderr_tail": tail, "error": error}


def _json_child(args: list[str], timeout: float) -> dict:
    """`python tools/bench_peers.py --child ...` whose last stdout line is one JSON object."""
    try:
        proc = subprocess.run([PYTHON, __file__, "--child", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:  # a native crash leaves no JSON: its exit code and stderr say it
        return {"error": f"exit {proc.returncode}: {_reason(proc.stderr.splitlines()[-15:]) or 'no output'}"}
    return json.loads(lines[-1])


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------- the exporters


def plan_ours(args, out: Path) -> dict:
    # Measured like the peers (measure(), not bench_build.run_build: that has no timeout).
    cmd = [str(ROOT / ".venv/bin/gemma3n-edge"), "build", args.checkpoint, "--out", str(out), "--recipe", args.recipe,
           "--modalities", args.modalities, "--prefill", args.prefill, "--context", str(args.context)]
    return {"command": cmd, "recipe": args.recipe, "version": _version("gemma3n-edge")}


def plan_litert_torch(args, out: Path) -> dict:
    recipe = LITERT_TORCH_RECIPES.get(args.recipe)
    cfg = json.loads((Path(args.checkpoint) / "config.json").read_text())
    asked = set(args.modalities.split(","))
    vision, audio = "vision" in asked and "vision_config" in cfg, "audio" in asked and "audio_config" in cfg
    spec = {"model": str(Path(args.checkpoint).resolve()), "output_dir": str(out),
            "task": "image_text_to_text" if vision or audio else "text_generation",
            "prefill_lengths": [int(x) for x in args.prefill.split(",")], "cache_length": args.context,
            "bundle_litert_lm": True, "externalize_embedder": True,
            "export_vision_encoder": vision, "export_audio_encoder": audio}
    if recipe:  # unmapped recipes keep its defaults
        spec |= {"quantization_recipe": recipe, "vision_encoder_quantization_recipe": recipe,
                 "audio_encoder_quantization_recipe": recipe}
    return {"command": [PYTHON, __file__, "--child", "litert-torch", json.dumps(spec)],
            "recipe": recipe or "dynamic_wi8_afp32: its default", "version": _version("litert-torch")}


def _python312() -> str | None:
    """A Python 3.12 for its pinned toolchain (uv would download one, which this machine cannot)."""
    found = [shutil.which("python3.12"), *sorted(map(str, Path.home().glob(".pyenv/versions/3.12*/bin/python3.12")))]
    for exe in filter(None, found):
        if subprocess.run([exe, "--version"], capture_output=True).returncode == 0:
            return exe
    return None


def plan_hf_to_litertlm(args, out: Path) -> dict:
    recipe = H2L_RECIPES.get(args.recipe)
    plan = {"recipe": recipe or f"int8: its default, no {args.recipe}", "version": H2L_VERSION}
    exe = H2L_VENV / "bin/hf-to-litertlm"
    if not exe.is_file():  # its own venv: its pins are not .venv's
        for step in (["python3", "-m", "venv", str(H2L_VENV)],
                     [str(H2L_VENV / "bin/pip"), "install", "-q", f"hf-to-litertlm=={H2L_VERSION}"]):
            try:
                proc = subprocess.run(step, capture_output=True, text=True, timeout=args.timeout)
            except (OSError, subprocess.TimeoutExpired) as e:
                return {**plan, "setup_error": str(e)}
            if proc.returncode != 0:
                return {**plan, "setup_error": f"{' '.join(step)}: exit {proc.returncode}: "
                                               f"{_reason(proc.stderr.splitlines()[-15:])}"}
    # It runs its converter with `uv run --frozen` in a toolchain it installs on first use; both
    # stay under build/peers. Its CLI takes a Hugging Face model id; we give it the checkpoint.
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env |= {"HF_TO_LITERTLM_HOME": str(PEERS / "hf-to-litertlm-home"), "UV_CACHE_DIR": str(PEERS / "uv-cache"),
            "UV_PYTHON_DOWNLOADS": "never"}
    python = _python312()
    if python:
        env["UV_PYTHON"] = python
    plan["first_use"] = not (PEERS / f"hf-to-litertlm-home/{H2L_VERSION}/.venv").is_dir()
    cmd = [str(exe), str(Path(args.checkpoint).resolve()), "--out", str(out), "--no-gate"]
    return {**plan, "command": cmd + (["--recipe", recipe] if recipe else []), "env": env, "cwd": out.parent}


PLANS = {"ours": plan_ours, "litert-torch": plan_litert_torch, "hf-to-litertlm": plan_hf_to_litertlm}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def run_exporter(name: str, args, work: Path) -> dict:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    plan = PLANS[name](args, out)
    row = {"exporter": name, "version": plan.get("version"), "recipe": plan["recipe"]}
    if "first_use" in plan:
        row["first_use_installs_toolchain"] = plan["first_use"]
    if "setup_error" in plan:
        return {**row, "command": None, "exit_code": None, "timed_out": False, "wall_s": None, "peak_rss_mib": None,
                "stderr_tail": [], "error": f"install failed: {plan['setup_error']}"}
    print(f"{name}: {' '.join(plan['command'])[:300]}", file=sys.stderr, flush=True)
    before = _load()
    m = measure(plan["command"], args.timeout, work / f"{name}.log", plan.get("env"), plan.get("cwd", ROOT))
    row |= {"command": " ".join(plan["command"]), **m, "load_avg": {"before": before, "after": _load()}}
    bundles = sorted(out.rglob("*.litertlm")) if out.is_dir() else []
    row["bundle"] = str(_shown(bundles[0])) if bundles else None
    if bundles:
        row |= read_bundle_summary(bundles[0])
    print(f"{name}: {status(row)} in {row['wall_s']} s, peak {row['peak_rss_mib']} MiB", file=sys.stderr, flush=True)
    return row


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def read_bundle_summary(path: Path) -> dict:
    """Size, sections and modalities of anyone's bundle, read as `gemma3n-edge inspect` reads it."""
    from edge.commands.inspect import litertlm_report

    try:
        r = litertlm_report(path)
    except Exception as e:  # an unreadable file is a result too
        return {"bundle_bytes": path.stat().st_size, "sections": [], "modalities": [], "bundle_problems": [str(e)]}
    kinds = [s["model_type"] for s in r["sections"] if s["model_type"]]
    sections = [{"type": s["type"], "model_type": s["model_type"], "bytes": s["bytes"]} for s in r["sections"]]
    return {"bundle_bytes": r["bytes"], "sections": sections,
            "modalities": [m for k, m in MODALITY_OF.items() if k in kinds], "bundle_problems": r["problems"]}


# ----------------------------------------------------------------------------- the children


def _child_litert_torch(spec: str) -> int:
    from android_standin_bundle import _alias_tflite_schema

    _alias_tflite_schema()  # the exporter imports TensorFlow's copy of the TFLite schema
    from litert_torch.generative.export_hf import export

    export.export(**json.loads(spec))
    return 0


def _child_reference(ckpt: str, tokens: str, context: str, prompts: str) -> int:
    """HF's greedy ids on each prompt's ids: bos + the text, as Pipeline.prompt_ids(p, apply_template=False)."""
    from converters.gemma3n.config import Gemma3nConfig
    from converters.tokenizer_info import special_tokens
    from edge.format.manifest import SpecialTokens
    from converters.reference import Reference
    from edge.runtime.tokenizer import Tokenizer

    cfg = Gemma3nConfig.from_hf(ckpt)
    tok = Tokenizer(Path(ckpt) / "tokenizer.model", SpecialTokens(**special_tokens(cfg, ckpt)))
    ref, rows = Reference(ckpt), []
    for p in json.loads(prompts):
        ids = [tok.tokens.bos] + tok.encode(p, (0, len(p)))
        n = min(int(tokens), int(context) - len(ids))  # stay inside every bundle's KV cache
        rows.append({"prompt": p, "ids": ids, "hf": ref.greedy(ids, n, tok.sp_vocab_size)})
    print(json.dumps({"prompts": rows}))
    return 0


def _child_engine(bundle: str, reference: str) -> int:
    """Google's engine on the bundle: loads? its greedy text on each raw prompt against HF's ids."""
    from litert_lm import interfaces

    from edge.parity.run import until_stop
    from edge.runtime.engine import Engine

    try:
        engine = Engine(bundle, benchmark=True)
    except Exception as e:
        print(json.dumps({"loads": False, "error": str(e)[-600:]}))
        return 0
    raw = engine._engine  # the wrapper speaks chat turns; parity on raw prompts uses a session (tests/test_bundle.py)
    stops = {s[0] for s in raw.eos_token_ids if len(s) == 1}
    greedy, rows = interfaces.SamplerConfig(top_k=1, top_p=1.0, temperature=1.0, seed=0), []
    for r in json.loads(Path(reference).read_text())["prompts"]:
        want = until_stop(r["hf"], stops)  # the engine stops where HF's answer ends
        row = {"prompt": r["prompt"], "prompt_tokens": len(r["ids"]), "tokens": len(r["hf"]), "compared": len(want)}
        session = raw.create_session(apply_prompt_template=False, max_output_tokens=len(r["hf"]), sampler_config=greedy)
        try:
            session.run_prefill([r["prompt"]])
            text = session.run_decode().texts[0]
            prefilled = session.get_benchmark_info().last_prefill_token_count
        except Exception as e:
            rows.append({**row, "error": str(e)[-300:]})
            continue
        finally:
            session.close()
        # The engine prefills its start token + its own tokenization: the same ids as HF's?
        same = [raw.bos_token_id] + engine.tokenize(r["prompt"]) == r["ids"] and prefilled == len(r["ids"])
        rows.append({**row, "same_prompt_ids": same, "agree": engine.agreed_tokens(text, want),
                     "first_difference": engine.first_difference(text, want),
                     "engine_text": text, "hf_text": engine.detokenize(want)})
    engine.close()
    print(json.dumps({"loads": True, "error": None, "prompts": rows}))
    return 0


CHILDREN = {"litert-torch": _child_litert_torch, "reference": _child_reference, "engine": _child_engine}


# ----------------------------------------------------------------------------- judging and rendering


def status(row: dict) -> str:
    """"ok", or "failed: why" for an exporter that wrote no usable bundle."""
    if row.get("error") or row.get("exit_code") != 0:
        return f"failed: {row.get('error') or 'exit ' + str(row.get('exit_code'))}"
    if not row.get("bundle"):
        return "failed: exit 0 but no .litertlm written"
    return "ok"


def _greedy_cell(row: dict) -> str:
    engine = row.get("engine") or {}
    if not engine.get("loads"):
        return "—"
    cells = []
    for p in engine.get("prompts", []):
        if p.get("error"):
            cells.append(f"error: {p['error'][:60]}")
            continue
        cell = f"{p['agree']}/{p['compared']}" + ("" if p["first_difference"] is None
                                                  else f", first diff {p['first_difference']}")
        cells.append(cell + ("" if p["same_prompt_ids"] else " (other prompt ids)"))
    return "; ".join(cells) or "—"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summarise(record: dict) -> list[dict]:
    """One row of table cells per exporter."""
    rows = []
    for r in record["exporters"]:
        st, engine = status(r), r.get("engine") or {}
        loads = "—" if not engine else "yes" if engine.get("loads") else f"no: {(engine.get('error') or '')[:80]}"
        name = f"{r['exporter']} {r.get('version') or ''} ({r['recipe']})".replace("  ", " ")
        rows.append({
            "exporter": name if st == "ok" else f"{name}: **{st.split(' -> next:')[0][:160]}**",
            "wall s": "—" if r.get("wall_s") is None else f"{r['wall_s']:.1f}",
            "peak RSS MiB": "—" if r.get("peak_rss_mib") is None else f"{r['peak_rss_mib']:.0f}",
            "bundle bytes": f"{r['bundle_bytes']:,}" if r.get("bundle_bytes") else "—",
            "modalities": ",".join(r.get("modalities") or []) or "—",
            "engine loads": loads,
            "greedy = HF (agree/N, first diff)": _greedy_cell(r)})
    return rows


def table(record: dict) -> str:
    rows = summarise(record)
    head = list(rows[0]) if rows else ["exporter"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the run


def _notes(args, rows: list[dict]) -> str:
    cfg = json.loads((Path(args.checkpoint) / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    parts = [args.notes] if args.notes else []
    parts.append(f"checkpoint {args.label}: {text.get('num_hidden_layers')} layers, hidden {text.get('hidden_size')}, "
                 f"vocab {text.get('vocab_size')}; context {args.context}, prefill {args.prefill}")
    if "hf-to-litertlm" in args.exporters:
        parts.append("hf-to-litertlm takes a Hugging Face model id and fixes its own prefill/context; "
                     "its own 8-question gate is skipped (--no-gate): the engine check is the same for all")
    if any(r.get("first_use_installs_toolchain") for r in rows):
        parts.append("hf-to-litertlm's wall time includes installing its pinned toolchain (first use)")
    return "; ".join(parts)


def run(args) -> dict:
    from benchutil import machine

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = [run_exporter(name, args, work) for name in args.exporters]
    ref = None
    if any(r.get("bundle") for r in rows):
        ref_file = work / "reference.json"
        print("reference: HF transformers' greedy ids", file=sys.stderr, flush=True)
        ref = _json_child(["reference", args.checkpoint, str(args.tokens), str(args.context),
                           json.dumps(list(args.prompts))], args.timeout)
        ref_file.write_text(json.dumps(ref))
        for r in rows:
            if r.get("bundle") and "error" not in ref:
                r["engine"] = _json_child(["engine", str(ROOT / r["bundle"]), str(ref_file)], args.timeout)
                r["engine"].setdefault("loads", False)
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.strip()  # noqa: E731
    m = machine()
    return {
        "tool": "tools/bench_peers.py", "command": " ".join(["tools/bench_peers.py", *args.argv]),
        "commit": git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else ""),
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": {k: m[k] for k in ("cpu", "cores", "ram_gib")}, "cpu_flags": m["cpu_flags"],
        "checkpoint": args.checkpoint, "label": args.label, "recipe": args.recipe,
        "modalities": args.modalities.split(","), "prefill": args.prefill, "context": args.context,
        "tokens": args.tokens, "prompts": list(args.prompts), "timeout_s": args.timeout, "notes": _notes(args, rows),
        "reference_error": (ref or {}).get("error"), "exporters": rows,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return CHILDREN[argv[1]](*argv[2:])
    from edge.parity.cases import DEFAULT_PROMPTS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", help="Hugging Face checkpoint directory (config.json, *.safetensors)")
    p.add_argument("--table", metavar="RECORD", help="print RECORD.json as a Markdown table and exit")
    p.add_argument("--label", help="the checkpoint's shape in the record and file name (tiny-trained, E2B, ...)")
    p.add_argument("--recipe", default="fp32")
    p.add_argument("--modalities", default="text")
    p.add_argument("--prefill", default="8", help="prefill lengths, comma separated")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--exporters", default=",".join(EXPORTERS), help="some of " + ",".join(EXPORTERS))
    p.add_argument("--tokens", type=int, default=16, help="greedy tokens compared per prompt")
    p.add_argument("--timeout", type=float, default=1800, help="seconds each child may run")
    p.add_argument("--notes", default="", help="said first in the record's notes")
    p.add_argument("--work", default=str(PEERS / "work"), help="where the bundles go (each exporter's dir replaced)")
    p.add_argument("--out", help="record file (default: benchmarks/peers-<label>-<YYYYmmdd-HHMM>.json)")
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    if not args.checkpoint or not args.label:
        p.error("give a checkpoint and --label (or --table RECORD)")
    args.exporters = [e for e in args.exporters.split(",") if e]
    unknown = set(args.exporters) - set(EXPORTERS)
    if unknown:
        p.error(f"unknown exporter(s) {', '.join(sorted(unknown))}; known: {', '.join(EXPORTERS)}")
    args.argv, args.prompts = argv, DEFAULT_PROMPTS
    record = run(args)
    out = Path(args.out) if args.out else BENCHMARKS / (
        f"peers-{args.label.replace('/', '-')}-{time.strftime('%Y%m%d-%H%M', time.gmtime())}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(table(record))
    print(f"record: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
