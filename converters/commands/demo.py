"""gemma3n-edge demo: the whole mission on the embedded tiny model, in one screen.

checkpoint -> build all three modalities at the recipe a user ships -> a text, an image and an
audio prompt, each answered by our simulator and by Google's LiteRT-LM engine on the same
model.litertlm -> three-way parity (HF / simulator / engine) -> the way to the phone. Writes
WORKDIR/summary.json (per prompt: both answers, their token ids, equal) and the parity reports.
"""

from edge.commands._args import positive_int

NAME = "demo"
HELP = "the whole pipeline on the embedded tiny model: build, simulator vs Google's engine on text/image/audio, parity"

DEFAULT_PROMPT = "What does the for statement do?"
# int8: a recipe a user ships (int8 per-channel weights everywhere, a quarter of fp32; towers are
# int8 in every recipe) and the smallest at which our simulator is shown to give the engine's
# answer on all three prompts. `mixed` (int4 decoder, Google's own choice of size) still parts from
# the engine on the image prompt after a few tokens (open: docs/ENGINE.md "Kernels").
# Parity judges int8 by its own bounds (edge/parity/tolerances.py); `--recipe fp32` gives exact HF parity.
DEFAULT_RECIPE = "int8"
IMAGE_PROMPT = "What is in this picture?"
AUDIO_PROMPT = "What is said in this clip?"


def configure(p) -> None:
    p.add_argument("--workdir", default="build/demo", help="where the artifacts, reports and summary.json go")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the text prompt")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help="quantization recipe (default int8; mixed is smaller; "
                                                            "fp32 for exact HF parity)")
    p.add_argument("--max-tokens", type=positive_int, default=32)
    from edge.commands._args import add_json_flag

    add_json_flag(p)


def _checkpoint():
    from pathlib import Path

    import converters

    trained = Path(converters.__file__).parent / "data" / "tiny_trained"
    print(f"checkpoint: the tiny Gemma 3n trained on text, shipped with the package ({trained})")
    return trained


def _sizes(artifacts) -> list[str]:
    from edge.format.manifest import read_manifest

    m = read_manifest(artifacts)
    groups: dict[str, list[str]] = {}
    for a in m.artifacts.values():
        group = a.kind.split("_")[0] if a.kind.startswith(("vision", "audio", "end")) else "text"
        groups.setdefault("audio" if group == "end" else group, []).extend([a.file, *a.external_weights])
    lines = []
    for group, files in groups.items():
        total = sum(m.files[f].bytes for f in files)
        lines.append(f"   {group:<7}{total / 2**20:7.2f} MiB  {', '.join(sorted(files))}")
    bundle = m.files["model.litertlm"].bytes
    lines.append(f"   bundle {bundle / 2**20:7.2f} MiB  model.litertlm (what the phone loads: all of the above)")
    return lines


def _answer_both(session, engine, text, images, audio, max_tokens) -> dict:
    """One chat turn in the simulator (greedy) and in the engine; their texts, ids, and whether equal."""
    from edge.parity.forced_decode import greedy_tokens
    from edge.parity.run import until_stop

    pipeline = session.pipeline
    prompt = session.media.build(text, images=images, audio=audio)  # as parity lays out every turn
    n = min(max_tokens, pipeline.model.context_length - len(prompt.ids))
    answer = until_stop(greedy_tokens(pipeline, prompt.ids, n, prompt.soft), set(pipeline.model.stop_tokens))
    sim_text = pipeline.tokenizer.decode(answer)
    eng_text = engine.answer(text, images=images, audio=audio, max_tokens=n)
    first = engine.first_difference(eng_text, answer)
    return {"prompt": text, "images": [str(p) for p in images], "audio": [str(p) for p in audio],
            "simulator": {"text": sim_text, "token_ids": [int(i) for i in answer]},
            # The engine's Python API returns text: its ids are that text through the engine's tokenizer.
            "engine": {"text": eng_text, "token_ids": [int(i) for i in engine.tokenize(eng_text)]},
            "equal": first is None, "first_difference": first}


def _show(kind: str, r: dict) -> None:
    media = (r["images"] + r["audio"])
    print(f"\n{kind}: {r['prompt']!r}" + (f"  + {media[0].split('/')[-1]}" if media else ""))
    print(f"   simulator: {r['simulator']['text'].strip()!r}")
    print(f"   engine:    {r['engine']['text'].strip()!r}")
    print("   -> same" if r["equal"] else f"   -> differ from token {r['first_difference']}")


def run(args) -> int:
    from edge.commands._args import messages_to_stderr, print_json

    with messages_to_stderr(args.json):
        rc, summary = _run(args)
    if args.json:
        print_json(summary)
    return rc


def _run(args) -> tuple[int, dict]:
    import json
    import sys
    from pathlib import Path

    import edge
    from edge.fileio import atomic_write

    workdir = Path(args.workdir)
    data = Path(edge.__file__).parent / "data"
    media = {"picture": data / "picture.png", "clip": data / "sentence.flac"}
    print("== 1/5 checkpoint")
    ckpt = _checkpoint()
    artifacts = _build_step(args, ckpt, workdir)
    results = _answer_step(args, artifacts, media)
    report = _parity_step(args, artifacts, ckpt, media, workdir)
    summary = {**results, "recipe": args.recipe, "bundle_bytes": (artifacts / "model.litertlm").stat().st_size,
               "parity_ok": report["ok"]}
    atomic_write(workdir / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    print(f"reports: {workdir / 'parity.html'}, {workdir / 'parity.json'}; summary: {workdir / 'summary.json'}")

    print("\n== 5/5 to the phone")
    print(f"   gemma3n-edge apk && gemma3n-edge install {artifacts}   (demo app + bundle over adb)")
    print(f"   or Google AI Edge Gallery: gemma3n-edge gallery {artifacts}   (how to import it; with audio in the "
          "bundle, Gallery 1.0.18's older runtime answers image/audio prompts otherwise: docs/GALLERY.md)")
    sys.stdout.flush()
    return (0 if report["ok"] and all(r["equal"] for r in results.values()) else 1), summary


def _build_step(args, ckpt, workdir):
    import io
    import time

    from converters.build import BuildOptions, Progress, build

    print(f"\n== 2/5 build phone artifacts: text + vision + audio, recipe {args.recipe} -> {workdir / 'artifacts'}")
    # Context 320: room for the audio clip's soft tokens, the prompt and an answer.
    t0 = time.perf_counter()
    opts = BuildOptions(recipe=args.recipe, prefill=(16, 64), context=320, modalities=("text", "vision", "audio"))
    # The stage lines of `build` stay out of the demo's one screen (`gemma3n-edge build` shows them).
    artifacts = build(ckpt, workdir / "artifacts", opts, progress=Progress(total=6, out=io.StringIO()))
    print(f"   built in {time.perf_counter() - t0:.1f} s (graphs are cached after the first run)")
    print("\n".join(_sizes(artifacts)))
    return artifacts


def _answer_step(args, artifacts, media) -> dict:
    from edge.runtime.engine import Engine
    from edge.runtime.session import Session

    print("\n== 3/5 the same model.litertlm in our simulator (no torch) and in Google's LiteRT-LM engine")
    session = Session.open(artifacts)
    engine = Engine(artifacts / "model.litertlm")
    results = {}
    try:
        for kind, text, images, audio in (("text", args.prompt, (), ()),
                                          ("image", IMAGE_PROMPT, (media["picture"],), ()),
                                          ("audio", AUDIO_PROMPT, (), (media["clip"],))):
            results[kind] = _answer_both(session, engine, text, images, audio, args.max_tokens)
            _show(kind, results[kind])
    finally:
        engine.close()
        session.close()
    print("\nnote: the tiny model learned from text only, so its image and audio answers are not descriptions; "
          "what counts here is that simulator and engine agree")
    return results


def _parity_step(args, artifacts, ckpt, media, workdir) -> dict:
    import json

    from edge.fileio import atomic_write
    from edge.parity.run import run_parity, summary_lines, write_html
    from edge.parity.cases import Case

    print("\n== 4/5 three-way parity: PyTorch (HF) / simulator / engine")
    cases = [Case("text", args.prompt), Case("image", IMAGE_PROMPT, images=(str(media["picture"]),)),
             Case("audio", AUDIO_PROMPT, audio=(str(media["clip"]),))]
    report = run_parity(artifacts, ckpt, cases=cases, max_tokens=16)
    print("\n".join(summary_lines(report)[1:]))
    atomic_write(workdir / "parity.json", json.dumps(report, indent=1) + "\n")
    write_html(report, workdir / "parity.html")
    return report
