"""gemma3n-edge parity DIR --reference CKPT: artifacts vs the PyTorch model, as a report."""

NAME = "parity"
HELP = "compare the artifacts with the PyTorch reference (per artifact, per step, greedy) and write a report"


def configure(p) -> None:
    p.add_argument("artifacts", help="artifact directory written by `gemma3n-edge build`")
    p.add_argument("--reference", required=True, help="the Hugging Face checkpoint the artifacts were built from")
    p.add_argument("--prompt", action="append", help="prompt to compare on (repeatable; default: two built-in ones)")
    p.add_argument("--max-tokens", type=int, default=32, help="decode steps compared per prompt (default 32)")
    p.add_argument("--json", help="write the full report (per step) as JSON")
    p.add_argument("--html", help="write a self-contained HTML report with plots")


def run(args) -> int:
    import json

    from edge.fileio import atomic_write
    from edge.parity import DEFAULT_PROMPTS, run_parity, summary_lines, write_html

    report = run_parity(args.artifacts, args.reference, prompts=tuple(args.prompt or DEFAULT_PROMPTS),
                        max_tokens=args.max_tokens)
    print("\n".join(summary_lines(report)))
    if args.json:
        atomic_write(args.json, json.dumps(report, indent=1) + "\n")
        print(f"JSON report: {args.json}")
    if args.html:
        write_html(report, args.html)
        print(f"HTML report: {args.html}")
    ok = report["generation"]["greedy_match"] or report["recipe"] != "fp32"
    ok = ok and all(a.get("within_tolerance", True) for a in report["artifacts"].values())
    return 0 if ok else 1
