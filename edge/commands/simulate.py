"""`gemma3n-edge simulate DIR --prompt TEXT`: run the artifacts on the desktop, torch-free.

Loads and verifies the artifact directory, streams the generated text to stdout, then
reports TTFT, prefill and decode throughput and peak RSS on stderr (so stdout is only
the model's text). `--json F` also writes token ids, text and metrics.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

from edge.commands._args import non_negative_float, non_negative_int, positive_int, probability

NAME = "simulate"
HELP = "Run an artifact directory on the desktop through LiteRT (no torch): stream text, report TTFT and tokens/s."


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="artifact directory (manifest.json, .tflite files, tokenizer.model), "
                                             "or the model.litertlm bundle `build` writes (run from its sections)")
    p.add_argument("--prompt", required=True, help="the user's message")
    p.add_argument("--image", action="append", default=[], metavar="F",
                   help="an image (JPEG, PNG, WebP, ...) placed before the prompt text (repeatable)")
    p.add_argument("--audio", action="append", default=[], metavar="F",
                   help="an audio clip (WAV, FLAC, OGG; up to 30 s) placed before the prompt text (repeatable)")
    p.add_argument("--max-tokens", type=positive_int, default=256, help="generated tokens at most, stop token included (default 256)")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=non_negative_int, default=0, help="sample among the k most likely tokens (0 = no limit)")
    p.add_argument("--top-p", type=probability, default=1.0, help="nucleus sampling mass (1 = no limit)")
    p.add_argument("--seed", type=non_negative_int, default=None, help="random seed for sampling (reproducible output)")
    p.add_argument("--no-template", action="store_true", help="feed the prompt as is, without the chat template")
    p.add_argument("--raw-prompt", action="store_true",
                   help="turn marker strings typed in the prompt (<start_of_turn>, <image_soft_token>, ...) into "
                        "their control tokens (default: they stay text, so a prompt cannot forge a turn)")
    p.add_argument("--truncate", action="store_true", help="drop the oldest prompt tokens if the prompt overflows the context")
    p.add_argument("--json", metavar="F", default=None, help="write token ids, text and metrics to this JSON file")
    p.add_argument("--threads", type=non_negative_int, default=0, help="CPU threads for LiteRT (0 = all cores)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 and signature checks of the artifacts")
    p.add_argument("--runtime", choices=("simulator", "engine"), default="simulator",
                   help="simulator: our torch-free runtime over the flatbuffers (default); engine: Google's "
                        "LiteRT-LM on the same model.litertlm, greedy, for comparison")


def _write_out(text: str) -> None:
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:  # a terminal that cannot show the text: degrade, do not crash
        enc = sys.stdout.encoding or "ascii"
        sys.stdout.write(text.encode(enc, "replace").decode(enc))
    sys.stdout.flush()


def _run_engine(args: argparse.Namespace) -> int:
    """The same prompt through Google's engine on the bundle (DIR/model.litertlm or the bundle itself)."""
    from pathlib import Path

    from edge.errors import UserError
    from edge.runtime.engine import Engine

    if args.temperature or args.top_k or args.top_p != 1.0 or args.no_template or args.truncate:
        raise UserError("--runtime engine runs a greedy chat turn: drop --temperature/--top-k/--top-p/"
                        "--no-template/--truncate")
    from edge.runtime.tokenizer import SPECIAL_STRINGS

    if any(m in args.prompt for m in SPECIAL_STRINGS.values()):
        print("note: LiteRT-LM tokenizes marker strings in the prompt (<start_of_turn>, ...) as control tokens; "
              "the simulator keeps them as text unless --raw-prompt (docs/ENGINE.md)", file=sys.stderr)
    path = Path(args.dir)
    engine = Engine(path if path.suffix == ".litertlm" else path / "model.litertlm")
    try:
        t0 = time.perf_counter()
        text = engine.answer(args.prompt, images=args.image, audio=args.audio, max_tokens=args.max_tokens)
        seconds = time.perf_counter() - t0
    finally:
        engine.close()
    _write_out(text + "\n")
    print(f"engine:      LiteRT-LM on {engine.bundle.name}, {seconds:.2f} s for the whole turn", file=sys.stderr)
    if args.json:
        from edge.fileio import atomic_write

        doc = {"artifacts": str(args.dir), "runtime": "engine", "prompt": args.prompt, "images": args.image,
               "audio": args.audio, "max_tokens": args.max_tokens, "text": text, "seconds": seconds}
        atomic_write(args.json, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return 0


def _print_stats(result, manifest, media_s: float | None) -> None:
    """How the generation ended and its metrics, on stderr (stdout is only the model's text)."""
    err = sys.stderr
    if result.truncated_tokens:
        print(f"note: dropped the oldest {result.truncated_tokens} prompt tokens (--truncate)", file=err)
    print(f"stop:        {result.stop_reason.replace('_', ' ')}", file=err)
    if result.stop_reason == "context_full":
        print(f"note: the answer stopped at the end of the context ({manifest.model.context_length} tokens), as "
              "LiteRT-LM does; rebuild with a larger --context for longer answers", file=err)
    if media_s is not None:  # not part of TTFT below, which starts at the first prefill
        print(f"media:       {media_s * 1000:.1f} ms (load + run the image/audio encoders)", file=err)
    for line in result.metrics.lines():
        print(line, file=err)


def run(args: argparse.Namespace) -> int:
    if args.runtime == "engine":
        return _run_engine(args)
    from edge.fileio import atomic_write
    from edge.runtime.native_log import native_stderr
    from edge.runtime.pipeline import GenerationConfig
    from edge.runtime.sampler import Sampler, SamplerConfig
    from edge.runtime.session import Session

    sampler_config = SamplerConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    config = GenerationConfig(max_tokens=args.max_tokens, apply_template=not args.no_template, truncate=args.truncate,
                              raw_prompt=args.raw_prompt)
    session = Session.open(args.dir, verify=not args.no_verify, num_threads=args.threads)
    manifest = session.manifest
    try:
        t_media = time.perf_counter()
        prompt = session.prompt(args.prompt, images=args.image, audio=args.audio, apply_template=not args.no_template,
                                raw=args.raw_prompt)
        media_s = time.perf_counter() - t_media if args.image or args.audio else None
        result = session.generate(prompt=prompt, config=config, sampler=Sampler(sampler_config), on_text=_write_out)
    finally:
        with native_stderr():  # LiteRT logs each environment's teardown
            session.close()
            del session
            gc.collect()
    _write_out("\n")
    _print_stats(result, manifest, media_s)

    if args.json:
        doc = {
            "artifacts": str(args.dir),
            "generator": manifest.generator,
            "prompt": args.prompt,
            "sampler": {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed},
            "max_tokens": args.max_tokens,
            "template": not args.no_template,
            **result.to_dict(),
        }
        atomic_write(args.json, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
