"""Write a tiny Gemma 3n checkpoint (Hugging Face layout): a thin CLI over converters.tiny.

    python tools/make_tiny_checkpoint.py --out DIR [--seed N] [--preset tiny|tiny-e4b]
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from converters.tiny import PRESETS, make_tiny_checkpoint
    from edge.errors import UserError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="default: tiny")
    args = parser.parse_args(argv)
    try:
        out = make_tiny_checkpoint(args.out, seed=args.seed, preset=args.preset)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
