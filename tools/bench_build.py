#!/usr/bin/env python
"""Run `gemma3n-edge build` and measure peak memory and wall time per build stage, as JSON.

The build prints its stages on stderr (`[2/6] per-layer embedder: ...`); this tool runs it as a
child process, follows those lines, and samples the child's /proc status every 0.2 s, so each
stage gets its own peak RSS, split into anonymous memory (what the build allocates) and
file-backed pages (memory-mapped checkpoint/artifact files: counted in RSS, but clean pages the
kernel can drop under pressure). The whole run's peak is the kernel's ru_maxrss of the child
(wait4), which cannot miss a short spike the sampler might.

    .venv/bin/python tools/bench_build.py --json build/bench/build_e2b.json -- \\
        build/bench/e2b-random --out build/bench/e2b-int4 --recipe int4 --prefill 128,1024 --context 4096

Everything after `--` is passed to `gemma3n-edge build`. Note that other processes on the
machine share its cores: wall times are only comparable on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_STAGE = re.compile(r"^\[(\d+)/(\d+)\] (.*?)( \.\.\.)?$")
_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def _status(pid: int) -> dict[str, int] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            out = {}
            for line in f:
                key = line.split(":", 1)[0]
                if key in _FIELDS:
                    out[key] = int(line.split()[1]) * 1024
            return out
    except (FileNotFoundError, ProcessLookupError):
        return None


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of the process so far (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


class _Stages:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stages: list[dict] = [{"name": "startup (imports)", "t0": time.perf_counter(), "peak": {}}]
        self.log: list[str] = []

        self.pid: int | None = None

    def start(self, name: str) -> None:
        with self.lock:
            now, cpu = time.perf_counter(), _cpu_s(self.pid) if self.pid else None
            self.stages[-1]["t1"], self.stages[-1]["cpu1"] = now, cpu
            self.stages.append({"name": name, "t0": now, "cpu0": cpu, "peak": {}})

    def sample(self, st: dict[str, int]) -> None:
        with self.lock:
            self.stages[-1]["cpu_last"] = _cpu_s(self.pid) if self.pid else None
            peak = self.stages[-1]["peak"]
            for k, v in st.items():
                peak[k] = max(peak.get(k, 0), v)


def _reader(stream, stages: _Stages, echo: bool) -> None:
    for raw in iter(stream.readline, ""):
        line = raw.rstrip("\n")
        stages.log.append(line)
        if echo:
            print(line, file=sys.stderr, flush=True)
        m = _STAGE.match(line.strip())
        if m:
            stages.start(m.group(3))


def _stage_cpu(s: dict) -> float | None:
    """CPU seconds the stage used (the last stage ends at its last sample before exit)."""
    end = s.get("cpu1") if s.get("cpu1") is not None else s.get("cpu_last")
    return round(end - s["cpu0"], 1) if end is not None and s.get("cpu0") is not None else None


def run_build(build_args: list[str], interval: float = 0.2, echo: bool = True, script: str | None = None) -> dict:
    """`script`: run `.venv/bin/python SCRIPT <args>` instead of `gemma3n-edge build <args>` (an
    experiment that patches the build before calling it, measured the same way)."""
    cmd = ([str(ROOT / ".venv/bin/python"), script] if script else [str(ROOT / ".venv/bin/gemma3n-edge"), "build"])
    cmd += build_args
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    stages = _Stages()
    stages.pid = proc.pid
    stages.stages[0]["cpu0"] = 0.0
    threads = [threading.Thread(target=_reader, args=(proc.stderr, stages, echo), daemon=True),
               threading.Thread(target=_reader, args=(proc.stdout, stages, echo), daemon=True)]
    for t in threads:
        t.start()
    rusage = None
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            rusage, rc = ru, os.waitstatus_to_exitcode(status)
            break
        st = _status(proc.pid)
        if st:
            stages.sample(st)
        time.sleep(interval)
    proc.returncode = rc
    for t in threads:
        t.join(timeout=5)
    wall = time.perf_counter() - t0
    stages.stages[-1]["t1"] = time.perf_counter()
    mib = 1 << 20
    return {
        "command": " ".join(cmd),
        "exit_code": rc,
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(rusage.ru_maxrss / 1024, 1),  # kernel's high-water mark of the child (KiB)
        "user_cpu_s": round(rusage.ru_utime, 1),
        "sys_cpu_s": round(rusage.ru_stime, 1),
        "stages": [{"name": s["name"], "seconds": round(s["t1"] - s["t0"], 1), "cpu_s": _stage_cpu(s),
                    **{f"peak_{k}_mib": round(v / mib, 1) for k, v in s["peak"].items()}} for s in stages.stages],
        "log_tail": stages.log[-15:],
        "sampling": f"/proc/PID/status every {interval} s (VmRSS = RssAnon + RssFile + RssShmem); "
                    "cpu_s = user + system time from /proc/PID/stat",
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: bench_build.py [--json F] -- <gemma3n-edge build arguments>", file=sys.stderr)
        return 2
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the measurements here")
    p.add_argument("--interval", type=float, default=0.2, help="sampling period in seconds")
    p.add_argument("--script", help="run `.venv/bin/python SCRIPT <build arguments>` instead of gemma3n-edge build")
    args = p.parse_args(argv[:cut])
    result = run_build(argv[cut + 1:], args.interval, script=args.script)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.json)
    print(text)
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
