#!/usr/bin/env python
"""Which LiteRT-LM runtime versions load a bundle and answer? A JSON record, one row per version.

Phones run whatever LiteRT-LM their app ships: AI Edge Gallery 1.0.18 pins `litertlm-android`
0.11.0, our demo app 0.18.1. The desktop wheels of the same versions (`litert-lm-api` on PyPI,
each with its own liblitert-lm.so) are the closest check available here: each version is
downloaded once into build/runtimes/<version>/ (no dependencies: the wheel is the API and the
library) and run in a child process that creates an engine on the bundle (CPU) and asks one
short question. The result is "ok" with the answer's first characters, or the engine's error.

    .venv/bin/python tools/check_runtimes.py build/demo/artifacts/model.litertlm \\
        --json benchmarks/runtimes_demo_int8.json
    .venv/bin/python tools/check_runtimes.py BUNDLE --versions installed   # the venv's own, no download

The runtimes before 0.18 link libvulkan.so.1 (Debian: libvulkan1).
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))
PACKAGE = "litert-lm-api"
DEFAULT_VERSIONS = ("0.11.0", "0.12.0", "0.13.1", "0.14.0", "0.15.0", "0.16.0", "0.16.1", "0.17.0", "0.17.1", "0.18.1")

# Run in the child with the chosen runtime first on sys.path. Backend.CPU is an enum member
# before 0.18 and a class to instantiate from 0.18.
_CHILD = r"""
import json, re, sys
import litert_lm
bundle, cache, question, image, audio = sys.argv[1:6]


def cpu():
    b = litert_lm.Backend.CPU
    return b() if isinstance(b, type) else b


try:
    towers = {**({"vision_backend": cpu()} if image else {}), **({"audio_backend": cpu()} if audio else {})}
    engine = litert_lm.Engine(bundle, backend=cpu(), cache_dir=cache, **towers)
    conv = engine.create_conversation()
    parts = [{"type": "image", "path": image}] * bool(image) + [{"type": "audio", "path": audio}] * bool(audio)
    reply = conv.send_message({"role": "user", "content": [*parts, {"type": "text", "text": question}]}
                              if parts else question)
    if isinstance(reply, dict):  # {"role": "assistant", "content": [{"type": "text", "text": ...}]}
        reply = "".join(c.get("text", "") for c in reply.get("content", []) if isinstance(c, dict))
    text = str(reply)
    print(json.dumps({"ok": True, "answer": text[:120]}))
except Exception as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
"""


def runtime_dir(version: str, store: Path) -> Path:
    """The unpacked wheel of `version` (downloaded once); "installed" is the venv's own."""
    if version == "installed":
        import litert_lm

        return Path(litert_lm.__file__).parents[1]
    out = store / version
    if (out / "litert_lm" / "liblitert-lm.so").is_file():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{PACKAGE}=={version}", "-d", tmp],
                       check=True, capture_output=True, text=True)
        wheel = next(Path(tmp).glob("*.whl"))
        staging = out.with_name(out.name + ".partial")
        with zipfile.ZipFile(wheel) as z:
            z.extractall(staging)
        staging.replace(out)
    return out


def try_version(version: str, bundle: Path, store: Path, question: str, image: str = "", audio: str = "") -> dict:
    try:
        path = runtime_dir(version, store)
    except subprocess.CalledProcessError as e:
        return {"version": version, "ok": False, "error": f"download failed: {e.stderr.strip()[-300:]}"}
    with tempfile.TemporaryDirectory(prefix="gemma3n-edge-runtime-") as cache:
        env = {**os.environ, "PYTHONPATH": str(path)}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(bundle), cache, question, image, audio],
                              capture_output=True, text=True, env=env, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"ok": False, "error": f"exit {proc.returncode}"}
    if not result["ok"]:  # the engine's own reason, from its log
        reason = [ln for ln in proc.stderr.splitlines() if "Failed to create engine" in ln or ln.startswith("E0000")]
        result["engine_log"] = [ln.split("] ", 1)[-1][:300] for ln in reason[:2]]
    return {"version": version, **result, "seconds": round(time.perf_counter() - t0, 1)}


def _oldest_same(rows: list[dict]) -> str | None:
    oldest = None
    for r in reversed(rows):
        if not r["same_as_newest"]:
            break
        oldest = r["version"]
    return oldest


def main(argv: list[str] | None = None) -> int:
    from benchutil import machine

    from edge.fileio import sha256_file

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path, help="a .litertlm file")
    p.add_argument("--versions", default=",".join(DEFAULT_VERSIONS),
                   help="comma-separated litert-lm-api versions, or 'installed' (default: 0.11.0 ... 0.18.1)")
    p.add_argument("--question", default="Hello")
    p.add_argument("--image", type=Path, default=ROOT / "edge/data/picture.png",
                   help="the image asked about when the bundle has a vision encoder (default: the demo's)")
    p.add_argument("--audio", type=Path, default=ROOT / "edge/data/sentence.flac",
                   help="the clip asked about when the bundle has an audio encoder (default: the demo's)")
    p.add_argument("--store", type=Path, default=ROOT / "build" / "runtimes", help="where the wheels are unpacked")
    p.add_argument("--json", help="write the record here")
    args = p.parse_args(argv)
    if not args.bundle.is_file():
        p.error(f"{args.bundle}: no such bundle")
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    if any(v != "installed" for v in versions) and not ctypes.util.find_library("vulkan"):
        p.error("the older LiteRT-LM runtimes link libvulkan.so.1: install it (Debian: apt-get install libvulkan1)")
    args.store.mkdir(parents=True, exist_ok=True)
    from edge.format.litertlm import read_bundle

    kinds = {s.model_type for s in read_bundle(args.bundle).sections}
    cases = {"text": ("", "")}
    if "vision_encoder" in kinds:
        cases["image"] = (str(args.image.resolve()), "")
    if "audio_encoder_hw" in kinds:
        cases["audio"] = ("", str(args.audio.resolve()))
    rows = []
    for v in versions:
        for case, media in cases.items():
            rows.append({"case": case, **try_version(v, args.bundle.resolve(), args.store, args.question, *media)})
            r = rows[-1]
            why = (r.get("engine_log") or [r.get("error", "")])[0]
            print(f"{v:>10} {case:<6} {'ok    ' + repr(r['answer'][:60]) if r['ok'] else 'FAIL  ' + why[:140]}",
                  file=sys.stderr)
    newest = {r["case"]: r.get("answer") for r in rows if r["version"] == versions[-1]}
    for r in rows:  # the answer the newest version gives is the reference (0.18.1: what parity checks)
        r["same_as_newest"] = r["ok"] and r.get("answer") == newest.get(r["case"])
    record = {
        "tool": "tools/check_runtimes.py", "command": " ".join(["check_runtimes.py", *(argv or sys.argv[1:])]),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "bundle": str(args.bundle),
        "bundle_bytes": args.bundle.stat().st_size, "question": args.question,
        "cases": {c: [m for m in media if m] for c, media in cases.items()},
        "bundle_sha256": sha256_file(args.bundle),
        "results": rows,
        # per case, the oldest version from which every version answers as the newest does
        "oldest_same": {c: _oldest_same([r for r in rows if r["case"] == c]) for c in cases},
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
