"""`gemma3n-edge inspect FILE`: what a file holds, read without running it.

One handler per file type, tried in order (`HANDLERS`); each is named as
"module:function" and imported only when it matches, so adding a type (e.g. .litertlm)
is one line here plus a function elsewhere. A handler prints to stdout and returns the
exit status (non-zero when the file fails verification).
"""

from __future__ import annotations

import argparse
import importlib
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


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    for matches, target in HANDLERS:
        if matches(path):
            module, func = target.split(":")
            return int(getattr(importlib.import_module(module), func)(path) or 0)
    raise UserError(f"{path}: don't know how to inspect this (known: .tflite, .litertlm, manifest.json, artifact directory)")


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def inspect_tflite(path: Path) -> int:
    from edge.tflite_file import summarize

    s = summarize(path)
    print(f"{path}  {human_bytes(s.size_bytes)} ({s.size_bytes:,} bytes)")
    print(f"subgraphs {s.num_subgraphs}, tensors {s.num_tensors}, buffers {s.num_buffers}")
    print(f"signatures ({len(s.signatures)}):")
    for key in sorted(s.signatures, key=_signature_order):
        sig = s.signatures[key]
        print(f"  {key}")
        for side, tensors in (("in ", sig.inputs), ("out", sig.outputs)):
            for name, t in tensors.items():
                print(f"    {side} {name:<24} {t.dtype:<8} {_shape(t.shape)}")
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


def inspect_manifest(path: Path) -> int:
    from edge.manifest import check_files, check_signatures, read_manifest

    directory = path if path.is_dir() else path.parent
    m = read_manifest(directory)
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


def _tokens(unions) -> str:
    return " ".join(str(list(u.token_ids.ids)) if u.HasField("token_ids") else repr(u.token_str) for u in unions)


def inspect_litertlm(path: Path) -> int:
    from edge.litertlm import SHA256_KEY, bundle_manifest, check, executor_metadata, llm_metadata, read_bundle

    b = read_bundle(path)
    print(f"{path}  {human_bytes(b.size)} ({b.size:,} bytes), LiteRT-LM format {'.'.join(map(str, b.version))}")
    for k, v in b.system_metadata.items():
        print(f"  {k}: {v}")
    print(f"sections ({len(b.sections)}):")
    print(f"  {'#':>2}  {'type':<22} {'model type':<20} {'offset':>12} {'size':>10}  items")
    for s in b.sections:
        items = ", ".join(f"{k}={str(v)[:16]}{'…' if len(str(v)) > 16 else ''}" for k, v in s.items.items()
                          if k != "model_type")
        print(f"  {s.index:>2}  {s.data_type:<22} {s.model_type or '-':<20} {s.begin:>12,} {human_bytes(s.size):>10}  {items}")
    problems = check(b)
    md = llm_metadata(b) if not any("LlmMetadata" in p for p in problems) else None
    if md is not None:
        from google.protobuf import text_format

        sp, kind = md.sampler_params, md.llm_model_type.WhichOneof("model_type")
        detail = text_format.MessageToString(getattr(md.llm_model_type, kind), as_one_line=True) if kind else ""
        print(f"LlmMetadata: model type {kind}{' {' + detail + '}' if detail else ''}, start {_tokens([md.start_token])}, "
              f"stop {_tokens(md.stop_tokens)}, max tokens {md.max_num_tokens}, "
              f"needs LiteRT-LM {md.min_runtime_version or 'any version'}")
        print(f"  sampler {sp.Type.Name(sp.type)} k={sp.k} p={sp.p:g} temperature={sp.temperature:g}; "
              f"jinja template {len(md.jinja_prompt_template)} chars; user prefix {md.prompt_templates.user.prefix!r}")
    em = executor_metadata(b) if not any("ExecutorMetadata" in p for p in problems) else None
    if em is not None:
        sb = em.llm_executor_metadata.state_buffers
        print(f"ExecutorMetadata: {len(sb)} state buffers ({', '.join(s.prefill_input_name for s in sb)})")
    m = bundle_manifest(b) if not problems else None
    if m is not None:
        md_ = m.model
        print(f"bundle manifest: {m.generator}, recipe {m.recipe.get('name', m.recipe) if m.recipe else 'none'}, "
              f"context {md_.context_length}, prefill {list(md_.prefill_lengths)}, "
              f"artifacts {', '.join(f'{a.kind}={a.file}' for a in m.artifacts.values())}")
    hashed = sum(1 for s in b.sections if SHA256_KEY in s.items)
    if problems:
        print(f"verification: FAILED ({len(problems)} problems)")
        for p in problems:
            print(f"  {p}")
        return 1
    print(f"verification: OK ({hashed} of {len(b.sections)} sections sha256-checked; models, weights, tokenizer "
          "and metadata parse)")
    return 0

