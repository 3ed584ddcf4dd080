"""Shared by the benchmark tools: run one measured stage in a fresh process.

Each stage runs as `python TOOL ARGS...` in its own process so that its peak RSS is its own;
the child prints one JSON object as its last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path


def run_child(script: str, args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# The staged tools (bench_audio, bench_vision) share their frame: --out and --work, a work
# directory, and a report that ends with the load average (the 2 cores are shared).


def stage_parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--out", help="JSON report path (required)")
    p.add_argument("--work", help="directory for the .tflite files (default: a temp dir, removed)")
    return p


@contextmanager
def work_dir(path: str | None):
    """`path` (created if missing), or a temporary directory removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(path or tmp)
        work.mkdir(parents=True, exist_ok=True)
        yield work


def write_report(path: str, report: dict) -> None:
    from edge.fileio import atomic_write

    report["machine"]["load_avg_end"] = os.getloadavg()
    atomic_write(path, json.dumps(report, indent=1))


# Instruction-set flags that decide which LiteRT/XNNPACK kernels run (int4/int8 dot products).
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8", "fma", "f16c", "asimddp", "i8mm")


def machine() -> dict:
    """The CPU model, cores, RAM and kernel-relevant ISA flags: every record says where it was measured."""
    info: dict = {"cpu": "unknown", "cores": os.cpu_count(), "ram_gib": None, "cpu_flags": []}
    try:
        text = open("/proc/cpuinfo").read()
        for line in text.splitlines():
            if line.startswith("model name") and info["cpu"] == "unknown":
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                info["cpu_flags"] = [f for f in _FLAGS if f in have]
                break
        mem = next(ln for ln in open("/proc/meminfo") if ln.startswith("MemTotal"))
        info["ram_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return info
