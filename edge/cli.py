"""`gemma3n-edge`: a thin CLI whose verbs map 1:1 onto library functions.

Verbs are discovered from `edge/commands/*.py` so each lives in its own module, plus the verbs
that need torch, which the torch side registers as entry points (edge/plugins.py).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import pkgutil
import sys
import traceback

from edge import __version__, commands, plugins, quiet
from edge.errors import UserError
from edge.fileio import atomic_write, cache_root
from edge.outdir import terminate_as_interrupt

# Top-level modules of the `convert` extra (pyproject.toml): the torch side that build, parity,
# slice and demo need and a phone-only install (`pip install gemma3n-edge`) lacks.
CONVERT_EXTRA = {"torch", "torchvision", "transformers", "timm", "litert_torch", "ai_edge_quantizer",
                 "litert_converter", "litert_lm_builder", "safetensors", "torchao"}


def _missing_extra(verb: str, e: ModuleNotFoundError) -> str | None:
    top = (e.name or "").split(".")[0]
    if top not in CONVERT_EXTRA:
        return None
    return (f"`gemma3n-edge {verb}` needs the converter extra, which is not installed here ({top} is missing). "
            "Install it with `pip install 'gemma3n-edge[convert]'` (in a checkout: `make venv`, which also "
            "takes the CPU build of torch from local disk instead of a multi-GB CUDA download).")


def _verbs():
    modules = [importlib.import_module(f"edge.commands.{info.name}")
               for info in pkgutil.iter_modules(commands.__path__) if not info.name.startswith("_")]
    modules += [plugins.load(f"verb.{name}") for name in plugins.verb_names()]
    return sorted(modules, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma3n-edge",
        description="Gemma 3n checkpoints -> LiteRT phone artifacts: build, simulate, parity, install.",
    )
    parser.add_argument("--version", action="version", version=f"gemma3n-edge {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show everything the libraries print (also: GEMMA3N_EDGE_VERBOSE=1)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in _verbs():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP, parents=[common])
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    bad = _not_utf8(args)
    if bad:
        parser.error(f"{bad} is not valid UTF-8 text; pass it in UTF-8 (check the terminal's or file's encoding)")
    if args.verbose:
        os.environ[quiet.VERBOSE_ENV] = "1"  # child processes and the native-log helpers see it too
    quiet.install_python_filters()
    try:
        with terminate_as_interrupt():  # SIGTERM unwinds like Ctrl-C: staging directories are removed
            return int(args._run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        message = _missing_extra(args.verb, e)
        if message is None:
            return _unexpected(args.verb, e)
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gemma3n-edge inspect X | head`: the reader left; not an error of ours
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print(f"error: the disk is full{f' (writing {e.filename})' if e.filename else ''}; free some space "
                  "and run again — outputs are written aside and swapped in, so nothing half-written was kept",
                  file=sys.stderr)
            return 1
        return _unexpected(args.verb, e)
    except Exception as e:  # a bug or a case nobody anticipated: a short message, the traceback in a log
        return _unexpected(args.verb, e)


def _not_utf8(args: argparse.Namespace) -> str | None:
    """The first argument holding bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    for name, value in vars(args).items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return f"--{name.replace('_', '-')}" if not name.startswith("_") else "an argument"
    return None


def _unexpected(verb: str, e: BaseException) -> int:
    if os.environ.get(quiet.VERBOSE_ENV):
        traceback.print_exc()
    log = None
    with contextlib.suppress(OSError):
        log = cache_root() / "logs" / "last-error.log"
        atomic_write(log, f"gemma3n-edge {__version__} {verb}: {' '.join(sys.argv[1:])}\n"
                          + "".join(traceback.format_exception(e)))
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"this is a bug in gemma3n-edge or a case it does not handle yet; the traceback is in {log} — "
          "please attach it to an issue (--verbose prints it)" if log else "(run with --verbose for the traceback)",
          file=sys.stderr)
    return 1


def entry() -> int:
    """The console script: `main` with the native libraries' stderr filtered (edge/quiet.py)."""
    argv = sys.argv[1:]
    if "--verbose" in argv:
        os.environ[quiet.VERBOSE_ENV] = "1"
    quiet.filter_native_stderr()
    return main(argv)


if __name__ == "__main__":
    sys.exit(entry())
