"""`gemma3n-edge build`: checkpoint directory -> artifact directory (ARCHITECTURE.md's contract).

Stages, each a library call (graph and weights kept apart, so peak memory does not grow
with the model; see converters/lowering/):
  1. read and validate: config (`Gemma3nConfig.from_hf`), strict tensor check of the
     checkpoint (`CheckpointReader.verify`), recipe and prefill lengths — before anything
     is written;
  2. per artifact: lower the export-friendly module with its weights as graph inputs,
     then splice the weights in, streamed from safetensors through the recipe's quantizer;
     the embedding and PLE tables go to external weight files beside their flatbuffers;
  3. tokenizer, manifest (sha256 of every file, signatures, tolerances).
Everything is written into a staging directory next to `--out` and swapped in at the
end, so a failed or interrupted build leaves `--out` as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from converters.quant.recipes import RecipeChoice
from edge import __version__
from edge.errors import UserError
from edge.fileio import atomic_write, checkpoint_digests, read_processor_settings
from edge.format.manifest import (FORMAT, FORMAT_VERSION, ArtifactSpec, Manifest, ModelSummary, SpecialTokens,
                                  file_entry, owned_files, write_manifest)
from edge.outdir import check_out_dir, make_staging, swap_in

DEFAULT_PREFILL = (32, 128)
DEFAULT_CONTEXT = 4096


@dataclass(frozen=True)
class BuildOptions:
    recipe: str | RecipeChoice = "int8"  # build() parses a name once into a RecipeChoice
    prefill: tuple[int, ...] = DEFAULT_PREFILL
    context: int | None = None  # default: min(4096, the model's max_position_embeddings)
    modalities: tuple[str, ...] | None = None  # default: every modality the checkpoint holds
    slice: str | None = None  # MatFormer preset name or spec.json (converters/matformer.py)
    verbose: bool = False
    bundle: bool = True  # also write model.litertlm for LiteRT-LM (converters/bundle.py)
    adapter: str | None = None  # a PEFT LoRA adapter directory, merged as weights stream (converters/adapter.py)
    chat_template: str | None = None  # a Jinja template file replacing the checkpoint's (converters/chat_template.py)
    source: object = None  # edge.hub.CheckpointSource when the checkpoint was named by hub id (provenance)


@dataclass
class Progress:
    """Stage lines on stderr: `[2/5] lowering decoder ... 12.3 s`."""

    total: int
    out: object = field(default_factory=lambda: sys.stderr)  # looked up per build: pytest swaps sys.stderr
    _i: int = 0
    _t0: float = 0.0
    _bar: object = None

    def stage(self, name: str) -> None:
        self._i += 1
        self._t0 = time.perf_counter()
        print(f"[{self._i}/{self.total}] {name} ...", file=self.out, flush=True)

    def done(self, detail: str = "") -> None:
        print(f"      done in {time.perf_counter() - self._t0:.1f} s{'  ' + detail if detail else ''}",
              file=self.out, flush=True)

    def weights(self, i: int, n: int, name: str) -> None:
        """Weight i of n spliced: a tqdm bar on a terminal (none in logs, where the stage lines suffice)."""
        from tqdm import tqdm

        if i == 0 or self._bar is None:
            self._bar = tqdm(total=n, desc="      weights", unit="w", file=self.out, disable=None, leave=False)
        self._bar.update(1)
        self._bar.set_postfix_str(name.rsplit(".", 2)[0][-32:], refresh=False)
        if i == n - 1:
            self._bar.close()
            self._bar = None


# ----------------------------------------------------------------------------- inputs


def _load_inputs(ckpt: Path, opts: BuildOptions):
    from converters.checkpoint import CheckpointReader
    from converters.gemma3n.config import Gemma3nConfig

    if not ckpt.is_dir():
        raise UserError(f"{ckpt}: not a checkpoint directory; pass the folder holding config.json and *.safetensors")
    if opts.bundle:  # before any import that reads it (one deep in transformers' imports would crash)
        from converters.bundle import source_date

        source_date()
    cfg = Gemma3nConfig.from_hf(ckpt)
    reader = CheckpointReader(ckpt)
    if opts.adapter:
        from converters.adapter import AdaptedCheckpoint

        reader = AdaptedCheckpoint(reader, opts.adapter)  # the source model as PEFT's merge_and_unload leaves it
    present = reader.modalities()
    reader.verify(cfg, present)
    if opts.slice:
        from converters.matformer import SlicedCheckpoint

        # A lazy view: layers dropped/renumbered, FFNs truncated, PLE sliced as rows stream.
        reader = SlicedCheckpoint(reader, opts.slice, cfg)
        cfg = reader.config
    context, prefill = _context_and_prefill(cfg.text, opts)
    modalities = present if opts.modalities is None else opts.modalities
    unknown = set(modalities) - {"text", "vision", "audio"}
    if unknown or "text" not in modalities:
        raise UserError(f"--modalities {','.join(modalities)}: choose from text,vision,audio (text is required)")
    lacking = [m for m in modalities if m not in present]
    if lacking:
        raise UserError(f"--modalities {','.join(modalities)}: the checkpoint has no {' or '.join(lacking)} tower "
                        f"({'a text-only Gemma3nForCausalLM' if cfg.causal_lm else 'its tensors are absent'}); "
                        f"use --modalities {','.join(present)}")
    from converters.components import components_for
    from converters.components.text import text_vocab

    built = components_for(modalities)  # every override names something built, before any work
    opts.recipe.check_keys({*modalities, *(c.key for c in built), *(c.name for c in built)})
    text_vocab(ckpt, cfg.text)  # the tokenizer is there and fits the model, before any work
    if opts.bundle:  # the phone preprocesses images and audio itself: refuse what it cannot reproduce
        from converters.bundle import check_audio_frontend, check_image_frontend
        from edge.runtime.audio import AudioFeatureExtractor
        from edge.runtime.image import ImageProcessorConfig

        if "vision" in modalities:
            check_image_frontend(ImageProcessorConfig.from_checkpoint(ckpt))
        if "audio" in modalities:
            check_audio_frontend(AudioFeatureExtractor.from_checkpoint(ckpt))
    return cfg, reader, context, prefill, tuple(modalities)


def _context_and_prefill(text, opts: BuildOptions) -> tuple[int, tuple[int, ...]]:
    context = opts.context or min(DEFAULT_CONTEXT, text.max_position_embeddings)
    if context < 2:
        raise UserError(f"--context {context}: must be at least 2")
    if context > text.max_position_embeddings:
        raise UserError(f"--context {context} is longer than the model's max_position_embeddings "
                        f"({text.max_position_embeddings}); use --context {text.max_position_embeddings} or less")
    prefill = tuple(sorted(set(opts.prefill)))
    for n in prefill:
        if n < 2:
            raise UserError(f"--prefill {n}: prefill lengths must be at least 2 (single tokens go through decode)")
        if n > context:
            raise UserError(f"--prefill {n} is larger than the context ({context}); use lengths <= --context")
    return context, prefill


_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
_TOWERS = {"vision": "model.vision_tower.", "audio": "model.audio_tower."}


def expected_output_bytes(reader, opts: BuildOptions) -> int:
    """An estimate of what the build writes: each weight at its recipe's width (2-D weights taken as
    matmul/table weights, the rest float), twice when the bundle repeats the artifacts, plus 5 %."""
    from converters.quant.recipes import EMB, FC, OTHER, get_recipe

    recipe = get_recipe(opts.recipe.default)  # an estimate: overrides left aside
    total = 0.0
    for name in reader.names():
        if any(name.startswith(prefix) and m not in opts.modalities for m, prefix in _TOWERS.items()):
            continue
        shape = tuple(reader.shape(name))
        component = ("per_layer_embedder" if "embed_tokens_per_layer" in name else "embedder"
                     if "embed_tokens" in name else "vision_encoder" if "vision" in name
                     else "audio_encoder" if "audio" in name else "decoder")
        kinds = frozenset({EMB if component.endswith("embedder") else FC}) if len(shape) == 2 else frozenset({OTHER})
        try:
            width = _BYTES[recipe.decide(component, name, shape, kinds).spec.dtype]
        except UserError:
            width = 4.0
        total += float(np.prod(shape, dtype=np.float64)) * width
    return int(total * (2 if opts.bundle else 1) * 1.05)


def _check_disk_space(reader, opts: BuildOptions, out: Path) -> None:
    where = out.absolute()
    while not where.exists():
        where = where.parent
    need, free = expected_output_bytes(reader, opts), shutil.disk_usage(where).free
    if need > free:
        raise UserError(f"--out {out}: the build needs about {need / 2**30:.2f} GiB and {where} has "
                        f"{free / 2**30:.2f} GiB free; free some space or choose --out on another disk")


def verdict_lines(out: Path, manifest) -> list[str]:
    """One line per artifact: its weight format as read from the file, size, and what was measured
    at build time (the weights against the checkpoint; the towers against their quantizer's check)."""
    lines = [f"verdict per artifact (the whole model's: gemma3n-edge eval {out} --reference CKPT):"]
    for name, a in manifest.artifacts.items():
        size = sum(manifest.files[f].bytes for f in (a.file, *a.external_weights) if f in manifest.files)
        fmt = a.extra.get("weight_format", "?")
        w = a.extra.get("weights")
        if w:
            census = ", ".join(f"{k} x{n}" for k, n in sorted(w["formats"].items(), key=lambda kv: -kv[1]))
            what = (f"weights {census}; worst {w['max_rel_error']:.2%} RMS from the checkpoint ({w['worst']})"
                    if w["max_rel_error"] else f"weights {census}, exact copies of the checkpoint's")
            if w["fallbacks"]:
                what += f"; {w['fallbacks']} fell back to a later rule (inspect the manifest)"
        else:
            tol = a.tolerance.max_abs if a.tolerance else None
            what = ("float weights" if fmt in ("float32", "float16") else
                    "every weight op in the format the recipe asks (checked op by op)")
            what += f"; parity bound max abs {tol:g}" if tol is not None else "; no parity bound declared"
        lines.append(f"  {name:<20} {fmt:<8} {size / 2**20:>8.2f} MiB  {what}")
    return lines


def _export_all(cfg, reader, ckpt: Path, staging: Path, context: int, prefill: tuple[int, ...], opts: BuildOptions,
                progress: Progress) -> dict[str, ArtifactSpec]:
    """Every artifact of the modalities built, each through the one export function."""
    from converters.components import components_for
    from converters.components.spec import Source
    from converters.export import export_component
    from converters.lowering.cache import cache_dir
    from edge.runtime.image import ImageProcessorConfig

    # The vision encoder's static input is the preprocessor's size.
    size = ImageProcessorConfig.from_checkpoint(ckpt).size if "vision" in opts.modalities else None
    source = Source(cfg, reader.tensor, cache_dir(), reader, ckpt, context, prefill, size, opts.verbose,
                    progress.weights)
    artifacts = {}
    for component in components_for(opts.modalities):
        progress.stage(f"{component.key}: {component.what}, recipe {opts.recipe.for_component(component)}")
        artifacts[component.key], report = export_component(component, source, opts.recipe, staging)
        progress.done(report.summary().splitlines()[0].split(": ", 1)[1] if report is not None else "")
    return artifacts


# ----------------------------------------------------------------------------- manifest


def _model_summary(cfg, ckpt: Path, context: int, prefill: tuple[int, ...], template: str | None) -> ModelSummary:
    from converters.chat_template import prompt_affixes
    from converters.tokenizer_info import special_tokens

    text = cfg.text
    tokens = special_tokens(cfg, ckpt)
    return ModelSummary(
        architecture="Gemma3nForConditionalGeneration", hidden_size=text.hidden_size,
        num_hidden_layers=text.num_hidden_layers, hidden_size_per_layer_input=text.hidden_size_per_layer_input,
        vocab_size=text.vocab_size, vocab_size_per_layer_input=text.vocab_size_per_layer_input,
        context_length=context, sliding_window=text.sliding_window,
        final_logit_softcapping=text.final_logit_softcapping, prefill_lengths=prefill, tokens=SpecialTokens(**tokens),
        stop_tokens=(tokens["eos"], tokens["end_of_turn"]), chat_template=prompt_affixes(template),
        image_soft_tokens=cfg.vision_soft_tokens_per_image, audio_soft_tokens_per_second=6.25,
    )


def build(ckpt: str | os.PathLike, out: str | os.PathLike, opts: BuildOptions = BuildOptions(),
          progress: Progress | None = None) -> Path:
    """Build the artifact directory `out` from the checkpoint directory `ckpt`; returns `out`."""
    from converters.chat_template import TEMPLATE_FILE, check_engine_renders, checkpoint_template, prompt_affixes

    ckpt, out = Path(ckpt), Path(out)
    opts = replace(opts, recipe=RecipeChoice.parse(opts.recipe))  # an unknown name fails before any work
    progress = progress or Progress(total=2 + opts.bundle)
    progress.total += _component_count(ckpt, opts)  # a stage per artifact
    progress.stage(f"reading {ckpt}")
    check_out_dir(out, owned_files, inputs=(ckpt,))  # before any work; checked again at the swap
    cfg, reader, context, prefill, modalities = _load_inputs(ckpt, opts)
    opts = replace(opts, modalities=modalities)  # resolved: the checkpoint's when not given
    template = checkpoint_template(ckpt, opts.chat_template)
    prompt_affixes(template)  # a template that cannot render a prompt fails before any work
    _check_disk_space(reader, opts, out)
    progress.done(f"{cfg.text.num_hidden_layers} layers, hidden {cfg.text.hidden_size}, context {context}, "
                  f"prefill {','.join(map(str, prefill))}, recipe {opts.recipe}")

    staging = make_staging(out)
    try:
        artifacts = _export_all(cfg, reader, ckpt, staging, context, prefill, opts, progress)
        progress.stage("tokenizer + manifest (sha256 of every file)")
        shutil.copyfile(ckpt / "tokenizer.model", staging / "tokenizer.model")
        if template is not None:  # the bundle carries it; the directory keeps it for rebundling
            atomic_write(staging / TEMPLATE_FILE, template)
        settings = read_processor_settings(ckpt)  # image/audio preprocessing, flat, for the simulator
        if settings is not None:
            atomic_write(staging / "preprocessor_config.json", json.dumps(settings, indent=2, sort_keys=True) + "\n")
        files = {f.name: file_entry(f) for f in sorted(staging.iterdir()) if f.is_file()}
        artifacts = {k: _with_weight_format(a, staging) for k, a in artifacts.items()}
        manifest = Manifest(FORMAT, FORMAT_VERSION, f"gemma3n-edge {__version__}",
                            _model_summary(cfg, ckpt, context, prefill, template), {"name": str(opts.recipe)},
                            _slice_record(reader, cfg), files, artifacts, extra=_provenance(ckpt, reader, opts))
        if opts.bundle:
            from converters.bundle import BUNDLE_NAME, write_bundle

            progress.done(f"{sum(f.bytes for f in files.values()) / 2**20:.1f} MiB in {len(files)} files")
            progress.stage(f"bundle: {BUNDLE_NAME} for LiteRT-LM")
            report = write_bundle(staging, manifest, checkpoint=ckpt)
            if template is not None:
                check_engine_renders(report.path, template, *_sample_media(opts.modalities))
            files = {**files, BUNDLE_NAME: file_entry(report.path)}
            manifest = replace(manifest, files=files)
        write_manifest(staging, manifest)
        progress.done(f"{sum(f.bytes for f in files.values()) / 2**20:.1f} MiB in {len(files)} files")
        swap_in(staging, out, owned_files, inputs=(ckpt,))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print("\n".join(verdict_lines(out, manifest)), file=progress.out, flush=True)
    return out


def _component_count(ckpt: Path, opts: BuildOptions) -> int:
    """Artifacts to build, for the stage count printed before the checkpoint is read in full (its
    safetensors headers say which towers it holds; any problem is reported by _load_inputs)."""
    from converters.components import components_for

    modalities = opts.modalities
    if modalities is None:
        from converters.checkpoint import CheckpointReader

        try:
            with CheckpointReader(ckpt) as reader:
                modalities = reader.modalities()
        except Exception:  # noqa: BLE001 - the same input fails with its clear error a moment later
            modalities = ("text",)
    return len(components_for(modalities))


def _sample_media(modalities: tuple[str, ...]) -> tuple[Path | None, Path | None]:
    """The packaged picture and spoken sentence, for the modalities built (template check)."""
    import edge

    data = Path(edge.__file__).parent / "data"
    return (data / "picture.png" if "vision" in modalities else None,
            data / "sentence.flac" if "audio" in modalities else None)


# The packages whose versions decide an artifact's bytes (recorded so a rebuild can match them).
TOOLCHAIN = ("torch", "litert-torch", "ai-edge-quantizer", "litert-converter", "ai-edge-litert", "litert-lm-builder",
             "transformers", "timm", "peft")


def _with_weight_format(a: ArtifactSpec, staging: Path) -> ArtifactSpec:
    """The artifact with the least precise weight format its file holds, read from the file
    (the resolved recipe, whatever --recipe said)."""
    from edge.parity import tolerances

    return replace(a, extra={**a.extra, "weight_format": tolerances.for_file(staging / a.file, a.kind)[0]})


def _provenance(ckpt: Path, reader, opts: BuildOptions) -> dict:
    """What the artifacts were made from and with: sha256 of every input file, the toolchain's
    versions and the options as a command (no output path, no time: same inputs, same manifest)."""
    from importlib import metadata

    source = opts.source.record() if opts.source is not None else {"checkpoint": str(ckpt.resolve())}
    out = {"source": {**source, "files": checkpoint_digests(ckpt)}}
    if opts.adapter:
        out["adapter"] = _adapted(reader).summary()
    versions = {}
    for name in TOOLCHAIN:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out["toolchain"] = {"gemma3n-edge": __version__, **versions}
    command = ["gemma3n-edge", "build", source.get("repo_id") or str(ckpt), "--recipe", str(opts.recipe),
               "--prefill", ",".join(map(str, sorted(set(opts.prefill)))), "--modalities", ",".join(opts.modalities)]
    for flag, value in (("--context", opts.context), ("--slice", opts.slice), ("--adapter", opts.adapter)):
        if value is not None:
            command += [flag, str(value)]
    out["command"] = command + ([] if opts.bundle else ["--no-bundle"])
    return out


def _adapted(reader):
    from converters.adapter import AdaptedCheckpoint

    while not isinstance(reader, AdaptedCheckpoint):  # a slice wraps the adapted source
        reader = reader.reader
    return reader


def _slice_record(reader, cfg) -> dict | None:
    from converters.matformer import SlicedCheckpoint, effective_params

    if not isinstance(reader, SlicedCheckpoint):
        return None
    return {"spec": reader.spec.to_json(), "name": reader.spec.name, "layers_kept": list(reader.plan.layers_kept),
            "effective_params": effective_params(cfg)}
