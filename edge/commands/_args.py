"""argparse types shared by the verbs: a bad number is a one-line usage error, never a traceback later."""

from __future__ import annotations

import argparse


def _int(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value}: must be {what}")
    return value


def non_negative_int(text: str) -> int:
    return _int(text, 0, "0 or more")


def positive_int(text: str) -> int:
    return _int(text, 1, "1 or more")


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number, 0 or more")
    return value


def probability(text: str) -> float:
    value = non_negative_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: must be in (0, 1]")
    return value


def add_artifact_args(p: argparse.ArgumentParser) -> None:
    """What eval and parity compare: an artifact directory and the checkpoint (and adapter) it was built from."""
    p.add_argument("artifacts", help="artifact directory written by `gemma3n-edge build`")
    p.add_argument("--reference", required=True, help="the Hugging Face checkpoint the artifacts were built from "
                   "(a directory, or a hub id in the local cache)")
    p.add_argument("--adapter", metavar="DIR", help="the LoRA adapter the artifacts were built with (merged by PEFT)")


# --json on the verbs whose normal output is messages: the result as one JSON object on stdout,
# the messages moved to stderr, so a script reads stdout alone.
JSON_HELP = "print the result as one JSON object on stdout (messages go to stderr)"


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def messages_to_stderr(enabled: bool):
    """Inside: print() goes to stderr when `enabled` (the verb's --json)."""
    import contextlib
    import sys

    return contextlib.redirect_stdout(sys.stderr) if enabled else contextlib.nullcontext()


def print_json(obj) -> None:
    import json

    print(json.dumps(obj, indent=1, ensure_ascii=False, default=str))
