"""gemma3n-edge build CKPT --out DIR: lower a checkpoint into the phone artifact directory."""

from edge.commands._args import add_json_flag, positive_int

NAME = "build"
HELP = "build LiteRT artifacts (decoder, embedders, PLE weights, manifest) from a Gemma 3n checkpoint"


def _lengths(text: str) -> tuple[int, ...]:
    import argparse

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 32,128") from None


def configure(p) -> None:
    p.add_argument("checkpoint", help="Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.model), "
                   "or a hub id (google/gemma-3n-E2B-it[@revision]) already in the local Hugging Face cache")
    p.add_argument("--out", help="artifact directory to write (replaced atomically)")
    p.add_argument("--recipe", default="int8", help="quantization recipe: fp32, fp16, int8, int4, int4-pc, int4-b128, mixed; "
                        "per-artifact overrides after commas, e.g. int4,vision=int8,audio_encoder=fp16")
    p.add_argument("--prefill", type=_lengths, default=(32, 128), help="prefill lengths, e.g. 32,128")
    p.add_argument("--context", type=positive_int, default=None, help="KV cache length (default min(4096, model max))")
    p.add_argument("--modalities", default=None,
                   help="comma-separated subset of text,vision,audio (default: everything the checkpoint holds)")
    p.add_argument("--slice", metavar="NAME|spec.json",
                   help="MatFormer slice to lower (E2B, E2.69B, ... or a JSON spec; see `gemma3n-edge slice --list`)")
    p.add_argument("--export-hf", metavar="DIR",
                   help="with --slice: write the sliced checkpoint in Hugging Face layout instead of building")
    p.add_argument("--adapter", metavar="DIR",
                   help="a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) merged into the weights")
    p.add_argument("--chat-template", metavar="FILE",
                   help="a Jinja chat template for the bundle instead of the checkpoint's (checked against the engine)")
    add_json_flag(p)
    p.add_argument("--no-bundle", action="store_true", help="skip model.litertlm (the LiteRT-LM bundle for the phone)")


def run(args) -> int:
    from edge.commands._args import messages_to_stderr, print_json

    with messages_to_stderr(args.json):
        result = _run(args)
    if args.json:
        print_json(result)
    return 0


def _run(args) -> dict:
    from converters.build import BuildOptions, build
    from edge import quiet
    from edge.errors import UserError
    from edge.hub import resolve_checkpoint

    source = resolve_checkpoint(args.checkpoint)
    if args.export_hf:
        if not args.slice:
            raise UserError("--export-hf writes a sliced checkpoint: give --slice NAME|spec.json too")
        from converters.matformer_export import export_sliced_hf

        if args.adapter:
            raise UserError("--adapter with --export-hf: merge the adapter with PEFT (merge_and_unload) first, or "
                            "build the slice with --adapter instead of exporting it")
        report = export_sliced_hf(source.path, args.slice, args.export_hf)
        print(f"sliced checkpoint written to {report.out_dir} ({report.effective_params / 1e9:.3f}B effective params)")
        return {"sliced_checkpoint": str(report.out_dir), "effective_params": report.effective_params}

    opts = BuildOptions(recipe=args.recipe, prefill=args.prefill, context=args.context,
                        modalities=None if args.modalities is None else tuple(
                            m.strip() for m in args.modalities.split(",") if m.strip()),
                        slice=args.slice, verbose=quiet.verbose(), bundle=not args.no_bundle, adapter=args.adapter,
                        chat_template=args.chat_template, source=source)
    if not args.out:
        raise UserError("give --out DIR for the artifacts (or --slice ... --export-hf DIR for a sliced checkpoint)")
    out = build(source.path, args.out, opts)
    print(f"artifacts written to {out}")
    return build_summary(out)


def build_summary(out) -> dict:
    """What a build wrote, from its manifest: each artifact's file, kind, bytes and weight format."""
    from edge.format.manifest import read_manifest

    m = read_manifest(out)
    return {"out": str(out), "recipe": m.recipe.get("name"), "context": m.model.context_length,
            "artifacts": {n: {"kind": a.kind, "file": a.file, "external_weights": list(a.external_weights),
                              "bytes": sum(m.files[f].bytes for f in (a.file, *a.external_weights) if f in m.files),
                              "weight_format": (a.extra or {}).get("weight_format")}
                          for n, a in m.artifacts.items()},
            "files": {f: {"bytes": e.bytes, "sha256": e.sha256} for f, e in m.files.items()}}
