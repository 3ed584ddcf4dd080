"""`gemma3n-edge`: a thin CLI whose verbs map 1:1 onto library functions.

Verbs are discovered from `edge/commands/*.py` so each lives in its own module.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from edge import __version__, commands
from edge.errors import UserError


def _verbs():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"edge.commands.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma3n-edge",
        description="Gemma 3n checkpoints -> LiteRT phone artifacts: build, simulate, parity, install.",
    )
    parser.add_argument("--version", action="version", version=f"gemma3n-edge {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in _verbs():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
