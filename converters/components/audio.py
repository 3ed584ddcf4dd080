"""The audio artifacts as components: audio_encoder (USM Conformer), audio_adapter (embed_audio)
and end_of_audio, from the modules of converters/gemma3n/audio.py. The encoder and adapter are
lowered with their weights as graph inputs and spliced through the recipe (their FULLY_CONNECTED
weights take its format; convs, depthwise taps and norms stay fp32); end_of_audio, one
constant, is converted with it baked in.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from converters.components.spec import Component, Lowered, Source, tower_recipe
from converters.gemma3n.audio import (EMBED_PREFIX, TOWER_PREFIX, AudioAdapter, AudioEncoder, AudioExportError,
                                      LocalAttention, build_end_of_audio, default_window_frames, frame_stride,
                                      hard_embedding)
from edge.format.manifest import Tolerance

ENCODER, ADAPTER, END_OF_AUDIO = "audio_encoder", "audio_adapter", "end_of_audio"
# LiteRT-LM model types (TfLiteModelType) of the three sections.
KINDS = {ENCODER: "audio_encoder_hw", ADAPTER: "audio_adapter", END_OF_AUDIO: "end_of_audio"}
# The audio tower's recipe when the caller has no reason to pick another. Measured on the real-size
# encoder (random weights, 30 s, tools/bench_audio.py): int8 dynamic = 660 MB, 6.3 s/clip, 5% rel.
# RMS error (token cosine >= 0.997); int4-b32 = 370 MB, 6.8 s, 60% (cosine 0.78: unusable);
# fp16 = 1.3 GB, 1e-3; fp32 = 2.6 GB, 16 s. int8 is the smallest that keeps the features.
DEFAULT_RECIPE = "int8"
# Max abs error of an artifact's output vs the HF reference, per recipe: ~2x the real-size
# measurements above (outputs are RMS-normed, |x| <= ~4), see TOLERANCE_WHY.
TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.6, "int4": 6.0}
TOLERANCE_WHY = {
    "fp32": "fp32 on both sides, sums reassociated (XNNPACK GEMMs, CUMSUM, softmax): observed 2e-6 (tiny) and "
            "2.3e-5 (real size, outputs up to 4.1)",
    "fp16": "fp16 matmul weights through 12 conformer blocks: observed 6e-3 at real size (rel. RMS 1.2e-3)",
    "int8": "int8 per-channel weights and dynamic int8 activations: observed 0.30 at real size (rel. RMS 5%)",
    "int4": "int4 blockwise-32 weights and dynamic activations: observed 2.9 at real size (rel. RMS 60%); not a "
            "parity bound, int4 is not recommended for the audio tower (use int8)",
}


# ---- Lowering: weights as graph inputs (converters/lowering), then streamed in by the splice.


def _meta(module: nn.Module, buffers: tuple[str, ...] = ()) -> nn.Module:
    """Parameters (and the named buffers) to the meta device: lowering needs only their shapes.

    The modules are built on the CPU first (their constant buffers must hold data); the Linear
    weights there are torch.empty, allocated but never touched, so they cost no resident memory.
    """
    for m in module.modules():
        for k, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[k] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
    for name in buffers:
        owner, _, attr = name.rpartition(".")
        m = module.get_submodule(owner)
        m._buffers[attr] = torch.empty_like(m._buffers[attr], device="meta")
    return module.eval()


def _fetch(get, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    try:
        t = get(name)
    except KeyError:
        raise AudioExportError(f"the checkpoint lacks audio tensor {name!r}: it has no audio tower (export "
                               "text-only with --modalities text,vision)") from None
    if tuple(t.shape) != tuple(shape):
        raise AudioExportError(f"{name}: checkpoint shape {tuple(t.shape)}, the config implies {tuple(shape)}: "
                               "the config.json does not describe these weights")
    return t


def _graph_module(name: str, cfg, window: int) -> tuple[nn.Module, dict, tuple[str, ...] | None]:
    """(module with meta weights, {signature: example inputs}, weight names or None = parameters)
    of one artifact; built on use (the encoder's constants take time at real size)."""
    a = cfg.audio
    if name == ENCODER:
        enc = AudioEncoder(a, window)
        for block in enc.conformer:
            block.attention.attn.fold_constants()
        return (_meta(enc), {ENCODER: {"src_inputs": torch.zeros(1, window, a.input_feat_size),
                                       "mask": torch.ones(1, window, dtype=torch.bool)}}, None)
    tokens = window // frame_stride(a)
    adapter = AudioAdapter(a, cfg.text.hidden_size)
    weights = (*(n for n, _ in adapter.named_parameters()), "padding_embedding")
    # Input order is the binding order: mask first, features second.
    return (_meta(adapter, ("padding_embedding",)),
            {ADAPTER: {"mask": torch.ones(1, tokens, dtype=torch.bool),
                       "features": torch.zeros(1, tokens, a.hidden_size)}}, weights)


def _weight_source(name: str, module: nn.Module, cfg, get):
    """get(<lowered parameter name>) for one artifact: checkpoint tensors, or the folded values."""
    a = cfg.audio
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
    if name == ADAPTER:
        # HF pads with embed_audio(vocab_size - 1)
        return lambda n: (hard_embedding(get, cfg, cfg.text.vocab_size - 1) if n == "padding_embedding"
                          else _fetch(get, EMBED_PREFIX + n, shapes[n]))
    attn = {f"{n}.": m for n, m in module.named_modules() if isinstance(m, LocalAttention)}
    d, h = a.hidden_size, a.hidden_size // a.conf_num_attention_heads
    original = {"per_dim_scale": (h,), "relative_position_embedding.pos_proj.weight": (d, d)}

    def source(n: str) -> torch.Tensor:
        owner, _, attr = n.rpartition(".")
        if f"{owner}." in attn and attr in ("sin_emb", "query_scale"):
            return attn[f"{owner}."].folded(attr, lambda o: _fetch(get, f"{TOWER_PREFIX}{owner}.{o}", original[o]))
        return _fetch(get, TOWER_PREFIX + n, shapes[n])

    return source


def lower_audio(cfg, graph_dir, window_frames: int | None = None, *, verbose: bool = False) -> dict[str, Path]:
    """Lower the encoder and adapter graphs with their weights as inputs into `graph_dir`; reuses graphs already there.

    Costs ~1 GB at real size (the module lives on the meta device), whatever the weights.
    """
    from converters.lowering.cache import cached_graph, graph_key
    from converters.lowering.export import lower

    window = window_frames or default_window_frames(cfg.audio)
    key = graph_key("audio", [repr(cfg.audio), cfg.text.hidden_size, window], [__name__, "converters.lowering.export"])
    def make(name):
        def write(tmp: Path) -> None:  # on a cache miss only
            module, sigs, weight_names = _graph_module(name, cfg, window)
            lower(module, sigs, tmp, weight_names=weight_names, verbose=verbose)
        return write

    return {name: cached_graph(graph_dir, name, key, make(name)) for name in (ENCODER, ADAPTER)}


def _tolerance(source: Source, path: Path, recipe: str, report) -> Tolerance:
    """The tolerance of the least precise FULLY_CONNECTED weight format in the artifact."""
    order = ["fp32", "fp16", "int8", "int4"]
    worst = max((label.split("-")[0] for label in fc_counts(report)), key=order.index, default="fp32")
    return Tolerance(TOLERANCES[worst], TOLERANCE_WHY[worst])


def fc_counts(report) -> dict[str, int]:
    """FULLY_CONNECTED weights per stored format (the other weights, convs and norms, stay fp32)."""
    counts: dict[str, int] = {}
    for w in report.weights:
        if "FULLY_CONNECTED" in w.kinds:
            counts[w.format] = counts.get(w.format, 0) + 1
    return counts


# ---------------------------------------------------------------- the components


def _lowerer(name: str):
    def lower(source: Source) -> Lowered:
        window = default_window_frames(source.cfg.audio)
        graph = lower_audio(source.cfg, source.graph_dir, window, verbose=source.verbose)[name]
        module = _graph_module(name, source.cfg, window)[0]  # the parameter shapes and the folded constants
        return Lowered(graph, _weight_source(name, module, source.cfg, source.get))
    return lower


def _end_of_audio(source: Source) -> bytes:
    """One (1, 1, H) constant: baked (as a weight input it would be the graph's output, which the
    splice refuses), never cached (its value comes from the checkpoint)."""
    from converters.lowering.export import lower_baked

    return lower_baked(build_end_of_audio(source.cfg, source.get), END_OF_AUDIO, {})


COMPONENTS = (
    Component(key=ENCODER, name=ENCODER, file=f"{ENCODER}.tflite", kind=KINDS[ENCODER], modality="audio",
              what="USM Conformer, matmul weights through the recipe", lower=_lowerer(ENCODER),
              tolerance=_tolerance, precision=tower_recipe, record_weights=False),
    Component(key=ADAPTER, name=ADAPTER, file=f"{ADAPTER}.tflite", kind=KINDS[ADAPTER], modality="audio",
              what="embed_audio, padding rows as HF", lower=_lowerer(ADAPTER), tolerance=_tolerance,
              precision=tower_recipe, record_weights=False),
    Component(key=END_OF_AUDIO, name=END_OF_AUDIO, file=f"{END_OF_AUDIO}.tflite", kind=KINDS[END_OF_AUDIO],
              modality="audio", what="the <end_of_audio> embedding, baked", lower=_end_of_audio,
              tolerance=lambda *_: Tolerance(1e-6, "a stored fp32 constant"), record_weights=False),
)
