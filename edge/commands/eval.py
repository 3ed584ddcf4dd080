"""gemma3n-edge eval DIR --reference CKPT: the quality verdict of an artifact directory (edge/parity/evaluate.py)."""

from edge.commands._args import add_artifact_args, positive_int

NAME = "eval"
HELP = "score the artifacts against the PyTorch reference on held-out text and media (perplexity, top-1, KL)"


def configure(p) -> None:
    add_artifact_args(p)
    p.add_argument("--text", metavar="FILE", help="held-out UTF-8 text to score (default: a short built-in passage)")
    p.add_argument("--window", type=positive_int, default=128, help="tokens per scored window (default 128)")
    p.add_argument("--max-windows", type=positive_int, default=8, help="windows of --text scored (default 8)")
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--html", help="write the verdict as a self-contained HTML page")


def run(args) -> int:
    import json

    from edge.parity.evaluate import run_eval, verdict_lines
    from edge.fileio import atomic_write, check_output_file
    from edge.hub import resolve_checkpoint

    check_output_file(args.json, "--json")
    check_output_file(args.html, "--html")
    reference = resolve_checkpoint(args.reference).path
    report = run_eval(args.artifacts, reference, text=args.text, adapter=args.adapter, window=max(args.window, 2),
                      max_windows=args.max_windows)
    print("\n".join(verdict_lines(report)))
    if args.json:
        atomic_write(args.json, json.dumps(report, indent=1) + "\n")
        print(f"JSON report: {args.json}")
    if args.html:
        from edge.parity.evaluate import quality_html

        atomic_write(args.html, '<!doctype html><html><head><meta charset="utf-8"><title>gemma3n-edge eval</title>'
                                '<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}td,th{padding:2px 10px;'
                                f'text-align:right}}</style></head><body>{quality_html(report)}</body></html>')
        print(f"HTML report: {args.html}")
    return 0 if report["ok"] else 1
