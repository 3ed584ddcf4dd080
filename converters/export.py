"""The one way an artifact is made: `export_component(component, source, recipe, out_dir)`.

Every artifact in the manifest, text and towers alike, goes through the same steps:
  1. lower the component's module with its weights as graph inputs (cached: converters/lowering/),
     or, for a graph of a few constants, convert it with them baked in;
  2. splice the weights in, streamed from the checkpoint through the recipe (matmul weights and
     tables quantized as they are written), or fp32 followed by quantization by op for
     convolution graphs (converters/quant/by_op.py);
  3. read the written file's signatures and check them against the artifact kind's contract
     (edge/format/contract.py);
  4. record its tolerance and what the splice measured, as the manifest's ArtifactSpec.
"""

from __future__ import annotations

from pathlib import Path

from converters.components.spec import Component, Lowered, Source
from converters.quant.recipes import RecipeChoice
from edge.format import contract
from edge.format import signatures as sig
from edge.fileio import atomic_write
from edge.format.manifest import ArtifactSpec


def export_component(component: Component, source: Source, recipe: str | RecipeChoice,
                     out_dir: Path) -> tuple[ArtifactSpec, object]:
    """Write `component`'s file (and its external weights) into `out_dir`; returns its manifest
    entry and the splice report (None for a baked graph). `recipe`: a name or `--recipe`'s
    choice with overrides (converters/quant/recipes.py); unknown names fail before any lowering."""
    recipe = RecipeChoice.parse(recipe).for_component(component)
    path = Path(out_dir) / component.file
    lowered = component.lower(source)
    report = None
    if isinstance(lowered, bytes):
        atomic_write(path, lowered)
    else:
        report = _splice(component, source, lowered, recipe, path)
    signatures = _signatures(path, contract.KINDS[component.kind].positional)
    contract.check(component.kind, {k: s.to_dict() for k, s in signatures.items()}, _known(source),
                   f"{component.file} ({component.key})")
    facts = dict(lowered.facts) if isinstance(lowered, Lowered) else {}
    if component.record_weights and report is not None:
        facts["weights"] = weights_record(report)
    tolerance = component.tolerance(source, path, recipe, report)
    return ArtifactSpec(component.file, component.kind, signatures, tuple(f for _, f in component.external),
                        tolerance, extra=facts), report


def _splice(component: Component, source: Source, lowered: Lowered, recipe: str, path: Path):
    from converters.lowering.splice import splice_weights

    by_op = component.quantize_by_op
    target = path.with_name(f".{path.name}.fp32") if by_op else path
    report = splice_weights(lowered.graph, target, lowered.weights, "fp32" if by_op else recipe,
                            component=component.name, external=dict(component.external), progress=source.progress)
    if by_op:
        try:
            by_op(target, path, recipe)
        finally:
            target.unlink(missing_ok=True)
    return report


def _signatures(path: Path, positional: bool) -> dict[str, sig.SignatureSpec]:
    """The signatures as the written file declares them: tensors bound by position listed in the
    subgraph's order (the order LiteRT binds them in), the others as the signature defs list them."""
    from edge.format.tflite import read_signatures

    def specs(tensors) -> dict[str, sig.TensorSpec]:
        return {n: sig.TensorSpec(tuple(t.shape), t.dtype) for n, t in tensors.items()}

    return {k: sig.SignatureSpec(specs(s.inputs), specs(s.outputs))
            for k, s in read_signatures(path, binding_order=positional).items()}


def _known(source: Source) -> dict[str, int]:
    """The contract's model-wide symbols, from the config (edge/format/contract.py)."""
    text = source.cfg.text
    known = {"H": text.hidden_size, "L": text.num_hidden_layers, "P": text.hidden_size_per_layer_input}
    if source.context:
        known["C"] = source.context
    return known


def export_modality(modality: str, source: Source, recipe: str, out_dir: Path) -> dict[str, tuple]:
    """Every component of one modality: {key: (ArtifactSpec, splice report)} (tools, tests)."""
    from converters.components import all_components

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return {c.key: export_component(c, source, recipe, Path(out_dir)) for c in all_components() if c.modality == modality}


def weights_record(report) -> dict:
    """The resolved recipe of a spliced artifact and what it cost: weights per format, how many fell
    back to a later rule, and the worst weight's relative RMS error against the checkpoint."""
    err, worst = report.weight_error()
    return {"recipe": report.recipe, "formats": report.formats(), "fallbacks": report.fallbacks(),
            "max_rel_error": round(err, 6), "worst": worst}
