#!/usr/bin/env python
"""Write a full-size Gemma 3n checkpoint (HF layout) with random bf16 weights, shard by shard.

A thin CLI over converters.random_checkpoint (see there for the layout and the values).

    .venv/bin/python tools/make_random_checkpoint.py --shape E2B --out build/e2b-random   # ~10.9 GB
    .venv/bin/python tools/make_random_checkpoint.py --shape E4B --out build/e4b-random   # ~15.6 GB

Peak memory is one generation block (32 MiB of float32 by default), whatever the shape.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from converters.random_checkpoint import DEFAULT_MAX_SHARD_BYTES, SHAPES, shape_config, write_random_checkpoint
    from edge.errors import UserError

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", required=True, choices=SHAPES, help="published model size to mimic")
    p.add_argument("--out", required=True, help="new or empty output directory")
    p.add_argument("--layers", type=int, help="the shape's widths with fewer decoder layers (default: all)")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    p.add_argument("--max-shard-bytes", type=int, default=DEFAULT_MAX_SHARD_BYTES,
                   help="shard size limit (default 2 GB; a larger single tensor gets its own shard)")
    args = p.parse_args(argv)
    try:
        cfg = shape_config(args.shape, args.layers)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(out.parent).free
        t0, count = time.perf_counter(), [0]

        def progress(name: str) -> None:
            count[0] += 1
            if count[0] % 100 == 1:
                print(f"  [{time.perf_counter() - t0:6.0f} s] tensor {count[0]}: {name}", file=sys.stderr, flush=True)

        print(f"writing {args.shape} to {out} ({free / 1e9:.0f} GB free)", file=sys.stderr)
        report = write_random_checkpoint(cfg, out, seed=args.seed, max_shard_bytes=args.max_shard_bytes,
                                         progress=progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{report.out}: {report.tensors} tensors, {report.weight_bytes / 1e9:.2f} GB in {len(report.shards)} "
          f"shards, {report.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
