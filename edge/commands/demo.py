"""gemma3n-edge demo: the whole job on the embedded tiny model (build -> simulate -> parity).

Uses the tiny *trained* Gemma 3n shipped with the package when present (so the answer is
readable), else a freshly made tiny checkpoint with perturbed random weights.
"""

NAME = "demo"
HELP = "run the whole pipeline on the embedded tiny model: checkpoint -> build -> simulate -> parity"

DEFAULT_PROMPT = "What does the for statement do?"


def configure(p) -> None:
    p.add_argument("--workdir", default="build/demo", help="where the checkpoint, artifacts and reports go")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--recipe", default="fp32", help="quantization recipe of the demo build")
    p.add_argument("--max-tokens", type=int, default=48)


def _checkpoint(workdir):
    from pathlib import Path

    import converters

    trained = Path(converters.__file__).parent / "data" / "tiny_trained"
    if (trained / "config.json").exists():
        print(f"checkpoint: the tiny trained Gemma 3n shipped with the package ({trained})")
        return trained
    from converters.tiny import make_tiny_checkpoint

    out = make_tiny_checkpoint(workdir / "ckpt", seed=0, preset="tiny")
    print(f"checkpoint: tiny Gemma 3n (random, every parameter perturbed) written to {out}")
    return out


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    from converters.build import BuildOptions, build
    from edge.fileio import atomic_write
    from edge.parity import run_parity, summary_lines, write_html
    from edge.runtime.loader import load_pipeline
    from edge.runtime.pipeline import GenerationConfig

    workdir = Path(args.workdir)
    print("== 1/4 checkpoint")
    ckpt = _checkpoint(workdir)

    print(f"\n== 2/4 build phone artifacts (recipe {args.recipe}) -> {workdir / 'artifacts'}")
    # Context 320: room for an audio clip's 188 soft tokens and an answer.
    artifacts = build(ckpt, workdir / "artifacts", BuildOptions(recipe=args.recipe, prefill=(16, 64), context=320))
    for f in sorted(artifacts.iterdir()):
        print(f"   {f.name:<30} {f.stat().st_size / 1024:>9.1f} KiB")

    print("\n== 3/4 simulate on the desktop (LiteRT interpreter, no torch)")
    print(f"prompt: {args.prompt}")
    pipeline, _ = load_pipeline(artifacts)
    try:
        print("answer: ", end="", flush=True)
        result = pipeline.generate(args.prompt, config=GenerationConfig(max_tokens=args.max_tokens),
                                   on_text=lambda t: print(t, end="", flush=True))
        print()
        print("\n".join("   " + line for line in result.metrics.lines()))
    finally:
        pipeline.close()

    print("\n== 4/4 parity against the PyTorch reference")
    report = run_parity(artifacts, ckpt, prompts=(args.prompt,), max_tokens=32)
    print("\n".join(summary_lines(report)))
    atomic_write(workdir / "parity.json", json.dumps(report, indent=1) + "\n")
    write_html(report, workdir / "parity.html")
    print(f"\nreports: {workdir / 'parity.html'} and {workdir / 'parity.json'}")
    sys.stdout.flush()
    return 0
