"""`gemma3n-edge inspect FILE`: what a file holds, read without running it.

One handler per file type, tried in order (`HANDLERS`); each is named as
"module:function" and imported only when it matches, so adding a type (e.g. .litertlm)
is one line here plus a function elsewhere. A handler prints to stdout (text, or with
`as_json` one JSON object of the same information) and returns the exit status (non-zero
when the file fails verification).

A .litertlm bundle from any exporter is listed like Google's `litert-lm-peek` does (sections,
metadata, and here also each model's signatures); only a bundle gemma3n-edge wrote is held to
our contract, any other to the format's structure (edge/format/litertlm.py `is_ours`).
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from edge.errors import UserError

NAME = "inspect"
HELP = "Show what a .tflite, .litertlm, manifest.json or artifact directory holds (signatures, sections, verification)."


def _is_manifest(p: Path) -> bool:
    return (p.is_dir() and (p / "manifest.json").is_file()) or p.name == "manifest.json"


# (matcher, "module:function"): the first match handles the path.
HANDLERS: list[tuple[Callable[[Path], bool], str]] = [
    (_is_manifest, "edge.commands.inspect:inspect_manifest"),
    (lambda p: p.suffix == ".tflite", "edge.commands.inspect:inspect_tflite"),
    (lambda p: p.is_file() and p.suffix == ".litertlm", "edge.commands.inspect:inspect_litertlm"),
]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a .tflite, a .litertlm bundle, a manifest.json or an artifact directory")
    p.add_argument("--json", action="store_true", help="print the same information as one JSON object")


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    for matches, target in HANDLERS:
        if matches(path):
            module, func = target.split(":")
            return int(getattr(importlib.import_module(module), func)(path, as_json=args.json) or 0)
    raise UserError(f"{path}: don't know how to inspect this (known: .tflite, .litertlm, manifest.json, artifact directory)")


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _print_signature(key: str, sig: dict) -> None:
    """One signature (a SignatureInfo as a dict), inputs then outputs."""
    print(f"  {key}")
    for side, tensors in (("in ", sig["inputs"]), ("out", sig["outputs"])):
        for name, t in tensors.items():
            print(f"    {side} {name:<24} {t['dtype']:<8} {_shape(t['shape'])}")


def inspect_tflite(path: Path, as_json: bool = False) -> int:
    from edge.format.tflite import summarize

    s = summarize(path)
    if as_json:
        print(json.dumps(asdict(s), indent=1))
        return 0
    print(f"{path}  {human_bytes(s.size_bytes)} ({s.size_bytes:,} bytes)")
    print(f"subgraphs {s.num_subgraphs}, tensors {s.num_tensors}, buffers {s.num_buffers}")
    print(f"signatures ({len(s.signatures)}):")
    for key in sorted(s.signatures, key=_signature_order):
        _print_signature(key, asdict(s.signatures[key]))
    print("weights (constant tensors, each buffer counted once):")
    for dtype, count in s.constant_dtype_counts.items():
        print(f"  {dtype:<8} {count:>6} tensors  {human_bytes(s.constant_dtype_bytes.get(dtype, 0)):>10}")
    if s.quantization_counts:
        print("quantization: " + ", ".join(f"{k} {v}" for k, v in s.quantization_counts.items()))
    else:
        print("quantization: none")
    for ext in s.external:
        where = path.parent / ext.group
        state = "present" if where.is_file() else "MISSING"
        print(f"external weights: {ext.group} ({state}): {ext.buffers} buffers, {human_bytes(ext.bytes)}")
    top = list(s.op_counts.items())[:12]
    if top:
        print("ops: " + ", ".join(f"{k} {v}" for k, v in top) + (" ..." if len(s.op_counts) > 12 else ""))
    return 0


def _signature_order(name: str):
    # prefill_32 before prefill_128 before decode
    digits = "".join(c for c in name if c.isdigit())
    return (name.startswith("decode"), name.rstrip("0123456789"), int(digits) if digits else 0)


def inspect_manifest(path: Path, as_json: bool = False) -> int:
    from edge.format.manifest import read_manifest
    from edge.format.manifest_verify import check_files, check_signatures

    directory = path if path.is_dir() else path.parent
    m = read_manifest(directory)
    if as_json:
        problems = check_files(m, directory) + check_signatures(m, directory)
        print(json.dumps({"manifest": m.to_dict(), "problems": problems}, indent=1))
        return 1 if problems else 0
    md = m.model
    print(f"{directory}: {m.format} v{m.format_version}, written by {m.generator}")
    print(
        f"model: {md.architecture}  H={md.hidden_size} L={md.num_hidden_layers} P={md.hidden_size_per_layer_input} "
        f"V={md.vocab_size}  context {md.context_length}, sliding window {md.sliding_window}, "
        f"prefill {list(md.prefill_lengths)}"
    )
    print(f"tokens: {md.tokens.items()}  stop {list(md.stop_tokens)}")
    print(f"recipe: {m.recipe.get('name', m.recipe) if m.recipe else 'none'}   slice: {m.slice['name'] if m.slice and 'name' in m.slice else m.slice}")
    print(f"artifacts ({len(m.artifacts)}):")
    for name, a in m.artifacts.items():
        size = m.files[a.file].bytes if a.file in m.files else 0
        ext = sum(m.files[e].bytes for e in a.external_weights if e in m.files)
        tol = f", tolerance {a.tolerance.max_abs:g}" if a.tolerance else ""
        extra = f" + {human_bytes(ext)} external ({', '.join(a.external_weights)})" if a.external_weights else ""
        print(f"  {name:<20} {a.kind:<20} {a.file} {human_bytes(size)}{extra}; {len(a.signatures)} signatures{tol}")
    total = sum(f.bytes for f in m.files.values())
    print(f"files: {len(m.files)}, {human_bytes(total)}")
    problems = check_files(m, directory) + check_signatures(m, directory)
    if problems:
        print(f"verification: FAILED ({len(problems)} problems)")
        for p in problems:
            print(f"  {p}")
        return 1
    print(f"verification: OK (sizes, sha256 and declared signatures of {len(m.files)} files)")
    return 0


def _token(u):
    """A TokenUnion as its ids (a list) or its string."""
    return list(u.token_ids.ids) if u.HasField("token_ids") else u.token_str


def _tokens(tokens) -> str:
    return " ".join(str(t) if isinstance(t, list) else repr(t) for t in tokens)


def _llm_dict(md) -> dict:
    from google.protobuf import text_format

    sp, kind = md.sampler_params, md.llm_model_type.WhichOneof("model_type")
    fields = text_format.MessageToString(getattr(md.llm_model_type, kind), as_one_line=True) if kind else ""
    return {"model_type": kind, "model_type_fields": fields,
            "start_token": _token(md.start_token), "stop_tokens": [_token(u) for u in md.stop_tokens],
            "max_num_tokens": md.max_num_tokens, "min_runtime_version": md.min_runtime_version,
            "sampler": {"type": sp.Type.Name(sp.type), "k": sp.k, "p": sp.p, "temperature": sp.temperature},
            "jinja_template_chars": len(md.jinja_prompt_template), "user_prefix": md.prompt_templates.user.prefix}


def _section_dict(b, s) -> dict:
    from edge.format.litertlm import LitertLmError, tflite_signatures

    d = {"index": s.index, "label": s.label, "type": s.data_type, "model_type": s.model_type, "begin": s.begin,
         "end": s.end, "bytes": s.size, "items": s.items}
    if s.data_type == "TFLiteModel":
        try:  # file order: the runtime runs a lookup model's first signature
            sigs, needs = tflite_signatures(b, s)
            d["signatures"] = {k: asdict(v) for k, v in sigs.items()}
            d["external_weights"] = needs  # group -> bytes the model reads from it
        except LitertLmError:  # reported by the checks, with the section named
            d["signatures"] = None
    return d


def litertlm_report(path: Path) -> dict:
    """Everything `inspect` says about a bundle, as plain data (the text and --json renderers).

    Our bundles (`is_ours`) are held to our contract (`check`: sha256 items, signature names,
    the bundle manifest), any other exporter's to the format's structure only (`check_structure`).
    """
    from google.protobuf.json_format import MessageToDict

    from edge.format.litertlm import (SHA256_KEY, bundle_manifest, check, check_structure, executor_metadata, is_ours,
                               llm_metadata, read_bundle)

    b = read_bundle(path)
    ours = is_ours(b)
    problems = check(b) if ours else check_structure(b)
    md = llm_metadata(b) if not any("LlmMetadata" in p for p in problems) else None
    em = executor_metadata(b) if not any("ExecutorMetadata" in p for p in problems) else None
    m = bundle_manifest(b) if ours and not problems else None
    return {
        "path": str(path), "bytes": b.size, "format": ".".join(map(str, b.version)),
        "system_metadata": b.system_metadata,
        "sections": [_section_dict(b, s) for s in b.sections],
        "llm_metadata": _llm_dict(md) if md is not None else None,
        "executor_metadata": None if em is None else {"state_buffers": [
            MessageToDict(sb, preserving_proto_field_name=True) for sb in em.llm_executor_metadata.state_buffers]},
        "bundle_manifest": None if m is None else {
            "generator": m.generator, "recipe": m.recipe.get("name", m.recipe) if m.recipe else "none",
            "context_length": m.model.context_length, "prefill_lengths": list(m.model.prefill_lengths),
            "artifacts": {a.kind: a.file for a in m.artifacts.values()}},
        "written_by_gemma3n_edge": ours,
        "sha256_checked": sum(1 for s in b.sections if SHA256_KEY in s.items) if ours else 0,
        "problems": problems,
    }


def inspect_litertlm(path: Path, as_json: bool = False) -> int:
    r = litertlm_report(path)
    if as_json:
        print(json.dumps(r, indent=1))
    else:
        _print_litertlm(r)
    return 1 if r["problems"] else 0


def _print_litertlm(r: dict) -> None:
    print(f"{r['path']}  {human_bytes(r['bytes'])} ({r['bytes']:,} bytes), LiteRT-LM format {r['format']}")
    for k, v in r["system_metadata"].items():
        print(f"  {k}: {v}")
    print(f"sections ({len(r['sections'])}):")
    print(f"  {'#':>2}  {'type':<22} {'model type':<20} {'offset':>12} {'size':>10}  items")
    for s in r["sections"]:
        items = ", ".join(f"{k}={str(v)[:16]}{'…' if len(str(v)) > 16 else ''}" for k, v in s["items"].items()
                          if k != "model_type")
        print(f"  {s['index']:>2}  {s['type']:<22} {s['model_type'] or '-':<20} {s['begin']:>12,} "
              f"{human_bytes(s['bytes']):>10}  {items}")
    # Ours keep the output tests and docs quote; the contract checks their signatures (and
    # `inspect` of the artifact's .tflite lists them).
    if not r["written_by_gemma3n_edge"]:
        _print_bundle_signatures(r["sections"])
    md = r["llm_metadata"]
    if md is not None:
        sp, kind, detail = md["sampler"], md["model_type"], md["model_type_fields"]
        print(f"LlmMetadata: model type {kind}{' {' + detail + '}' if detail else ''}, "
              f"start {_tokens([md['start_token']])}, stop {_tokens(md['stop_tokens'])}, "
              f"max tokens {md['max_num_tokens']}, needs LiteRT-LM {md['min_runtime_version'] or 'any version'}")
        print(f"  sampler {sp['type']} k={sp['k']} p={sp['p']:g} temperature={sp['temperature']:g}; "
              f"jinja template {md['jinja_template_chars']} chars; user prefix {md['user_prefix']!r}")
    if r["executor_metadata"] is not None:
        sb = r["executor_metadata"]["state_buffers"]
        print(f"ExecutorMetadata: {len(sb)} state buffers ({', '.join(s.get('prefill_input_name', '') for s in sb)})")
    m = r["bundle_manifest"]
    if m is not None:
        print(f"bundle manifest: {m['generator']}, recipe {m['recipe']}, context {m['context_length']}, "
              f"prefill {m['prefill_lengths']}, artifacts {', '.join(f'{k}={f}' for k, f in m['artifacts'].items())}")
    _print_verification(r)


def _print_bundle_signatures(sections: list[dict]) -> None:
    for s in sections:
        if s["type"] != "TFLiteModel":
            continue
        sigs = s["signatures"]
        print(f"signatures of {s['label']} ({'unreadable' if sigs is None else len(sigs)}):")
        for key, sig in (sigs or {}).items():
            _print_signature(key, sig)
        for group, n in (s.get("external_weights") or {}).items():
            print(f"  external weights: group {group!r}, reads up to {human_bytes(n)}")


def _print_verification(r: dict) -> None:
    problems, n = r["problems"], len(r["sections"])
    if r["written_by_gemma3n_edge"]:
        print("written by gemma3n-edge: contract checked")
    else:
        print("not written by gemma3n-edge: structure checked only (no contract)")
    if problems:
        print(f"verification: FAILED ({len(problems)} problems)")
        for p in problems:
            print(f"  {p}")
    elif r["written_by_gemma3n_edge"]:
        print(f"verification: OK ({r['sha256_checked']} of {n} sections sha256-checked; models, weights, tokenizer "
              "and metadata parse)")
    else:
        models = sum(1 for s in r["sections"] if s["type"] == "TFLiteModel")
        print(f"verification: OK (byte ranges of {n} sections; {models} TFLite flatbuffers well formed; weights, "
              "tokenizer and metadata parse)")
