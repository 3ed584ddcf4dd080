"""`gemma3n-edge gallery DIR|BUNDLE [--name N] [--entry F] [--json]`: how to run a bundle in AI Edge Gallery.

Prints the import steps with this bundle's switches (image, audio, max tokens, sampling) and the
RAM it needs; `--entry F` also writes Gallery's model-list file for it (edge/device/gallery.py).
"""

from __future__ import annotations

NAME = "gallery"
HELP = "say how to run a bundle in Google AI Edge Gallery (switches, RAM) and write its model-list entry"


def configure(p) -> None:
    p.add_argument("dir", help="artifact directory holding model.litertlm, or a .litertlm file (anyone's)")
    p.add_argument("--name", help="the model's name in Gallery (default: the directory's name)")
    p.add_argument("--entry", metavar="FILE", help="write Gallery's model list (model_allowlist_test.json) describing this bundle")
    p.add_argument("--json", action="store_true", help="print the facts and the entry as JSON instead")


def run(args) -> int:
    import json
    from dataclasses import asdict

    from edge.fileio import atomic_write, check_output_file
    from edge.device.gallery import describe, instructions

    check_output_file(args.entry, "--entry")
    m = describe(args.dir, name=args.name)
    entry = m.entry(name=args.name)
    if args.entry:
        atomic_write(args.entry, json.dumps({"models": [entry]}, indent=2) + "\n")
    if args.json:
        facts = {**asdict(m), "bundle": str(m.bundle), "max_tokens": m.max_tokens,
                 "min_device_memory_gb": m.min_device_memory_gb, "gallery_1_0_18_runtime_ok": m.gallery_runtime_ok}
        print(json.dumps({"model": facts, "entry": entry}, indent=1))
    else:
        print("\n".join(instructions(m, args.entry)))
    return 0
