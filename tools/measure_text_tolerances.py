"""Measure the text path's parity errors per recipe: the evidence behind edge/parity/tolerances.py.

    .venv/bin/python tools/measure_text_tolerances.py --out benchmarks/text_tolerances.json

For each recipe, builds the shipped tiny trained model (text only, no bundle) and the perturbed
random tiny model, runs `run_parity` (no engine) on several prompts and records, per artifact,
the max abs error of the table lookups (with the table's largest |value|, which the analytic
bounds scale with) and, for the decoder, the teacher-forced logit errors: max abs, min cosine,
top-1/top-5 agreement, mean and max KL. Also one deliberately wrong pairing (an int8 build of
one model checked against the other model) to show how far outside the tolerances that lands.
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

PROMPTS = ("What does the for statement do?", "Tell me about lambdas in Python.",
           "How do I open a file?", "Explain list comprehensions briefly.")


def _measure(artifacts: Path, reference: Path) -> dict:
    from edge.parity.run import run_parity

    r = run_parity(artifacts, reference, prompts=PROMPTS, max_tokens=32, engine=False)
    out = {name: {k: a[k] for k in ("max_abs_error", "max_rel_error", "cosine") if k in a}
           for name, a in r["artifacts"].items()}
    out["generation"] = {k: v for k, v in r["generation"].items() if k != "first_divergence"}
    return out


def _cpu() -> str:
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown"
    return f"{model}, {os.cpu_count()} cores"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--recipes", default="fp32,fp16,int8,int4,int4-b128,mixed")
    args = p.parse_args()

    import converters
    from converters.build import BuildOptions, build
    from converters.tiny import make_tiny_checkpoint
    from edge.fileio import atomic_write

    t0 = time.time()
    load = os.getloadavg()
    trained = Path(converters.__file__).parent / "data" / "tiny_trained"
    records = {"tool": "tools/measure_text_tolerances.py", "command": " ".join(["python", *sys.argv]),
               "cpu": _cpu(), "prompts": list(PROMPTS), "max_tokens": 32, "loadavg_at_start": load, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {"tiny_trained": trained, "tiny_perturbed": make_tiny_checkpoint(tmp / "ck", seed=0, preset="tiny")}
        for model, ckpt in models.items():
            records["models"][model] = {}
            for recipe in args.recipes.split(","):
                out = build(ckpt, tmp / f"{model}-{recipe}", BuildOptions(recipe=recipe, prefill=(16, 64),
                                                                         context=320, bundle=False))
                records["models"][model][recipe] = _measure(out, ckpt)
                print(model, recipe, json.dumps(records["models"][model][recipe]["decoder"]), flush=True)
        wrong = tmp / "tiny_trained-int8"
        records["wrong_reference"] = {"artifacts": "tiny_trained int8", "reference": "tiny_perturbed",
                                      **_measure(wrong, models["tiny_perturbed"])}
    records["seconds"] = round(time.time() - t0, 1)
    records["loadavg_at_end"] = os.getloadavg()
    atomic_write(args.out, json.dumps(records, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
