"""Shared by the benchmark tools: run one measured stage in a fresh process.

Each stage runs as `python TOOL ARGS...` in its own process so that its peak RSS is its own;
the child prints one JSON object as its last stdout line.
"""

from __future__ import annotations

import json
import subprocess
import sys


def run_child(script: str, args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])
