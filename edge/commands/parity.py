"""gemma3n-edge parity DIR --reference CKPT: artifacts vs the PyTorch model, as a report."""

from edge.commands._args import add_artifact_args, positive_int

NAME = "parity"
HELP = "compare the artifacts with the PyTorch reference (per artifact, per step, greedy) and write a report"


def configure(p) -> None:
    add_artifact_args(p)
    p.add_argument("--prompt", action="append", help="prompt to compare on (repeatable; default: two built-in ones)")
    p.add_argument("--image", action="append", default=[], help="also compare on this image (repeatable)")
    p.add_argument("--audio", action="append", default=[], help="also compare on this audio clip (repeatable)")
    p.add_argument("--no-engine", action="store_true", help="skip Google's LiteRT-LM engine (HF vs simulator only)")
    p.add_argument("--max-tokens", type=positive_int, default=32, help="decode steps compared per prompt (default 32)")
    p.add_argument("--json", help="write the full report (per step) as JSON")
    p.add_argument("--html", help="write a self-contained HTML report with plots")
    p.add_argument("--eval", action="store_true",
                   help="also give the quality verdict (as `gemma3n-edge eval`) in the report and the HTML")
    p.add_argument("--text", metavar="FILE", help="with --eval: held-out text to score (default: a built-in passage)")


def run(args) -> int:
    import json
    import tempfile

    from edge.errors import UserError
    from edge.fileio import atomic_write, check_output_file
    from edge.hub import resolve_checkpoint
    from edge.format.manifest_verify import load_manifest
    from edge.parity.run import run_parity, summary_lines, write_html
    from edge.parity.cases import DEFAULT_PROMPTS, Case, default_cases
    from edge.parity.reference_check import check_reference_dir

    check_output_file(args.json, "--json")
    check_output_file(args.html, "--html")
    if args.text and not args.eval:
        raise UserError("--text is the held-out text --eval scores; add --eval")
    reference = resolve_checkpoint(args.reference).path
    check_reference_dir(reference)
    if args.max_tokens < 1:
        raise UserError(f"--max-tokens {args.max_tokens}: compare at least 1 token")

    with tempfile.TemporaryDirectory(prefix="gemma3n-edge-media-") as media:
        cases = default_cases(load_manifest(args.artifacts), media, tuple(args.prompt or DEFAULT_PROMPTS))
        cases += [Case(f"image {p}", "What is in this picture?", images=(p,)) for p in args.image]
        cases += [Case(f"audio {p}", "What is said here?", audio=(p,)) for p in args.audio]
        report = run_parity(args.artifacts, reference, max_tokens=args.max_tokens, cases=cases,
                            engine=not args.no_engine, adapter=args.adapter)
    print("\n".join(summary_lines(report)))
    quality = None
    if args.eval:
        from edge.parity.evaluate import run_eval, verdict_lines

        quality = run_eval(args.artifacts, reference, text=args.text, adapter=args.adapter)
        report["quality"] = quality
        print("\n".join(verdict_lines(quality)))
    if args.json:
        atomic_write(args.json, json.dumps(report, indent=1) + "\n")
        print(f"JSON report: {args.json}")
    if args.html:
        write_html(report, args.html, quality)
        print(f"HTML report: {args.html}")
    return 0 if report["ok"] and (quality is None or quality["ok"]) else 1
