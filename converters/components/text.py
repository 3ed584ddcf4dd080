"""The text artifacts as components: the token embedder and the per-layer embedder (one lookup
each, their tables kept beside the flatbuffer as external weights: the "PLE cache" the phone
memory-maps) and the decoder (prefill_<N> for each length + decode, caches only for the layers
that own one). Each is lowered on the meta device with its weights as graph inputs; the splice
streams the checkpoint's rows through the recipe (converters/lowering/).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from converters.components.spec import Component, Lowered, Source
from edge.format import signatures as sig
from edge.errors import UserError

TEXT_PREFIX = "model.language_model."
# Each component's graph is defined by its module (and what it imports) plus the lowering code.
_GRAPH_CODE = {sig.EMBEDDER: "converters.gemma3n.embedder", sig.PER_LAYER_EMBEDDER: "converters.gemma3n.embedder",
               "decoder": "converters.gemma3n.decoder"}


class _Rows:
    """Array-like view of one checkpoint tensor, read row block by row block (never whole)."""

    def __init__(self, reader, name: str, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 limit: int | None = None):
        self.reader, self.name, self.transform = reader, name, transform
        self.shape = tuple(reader.shape(name))
        if limit is not None:  # the first `limit` rows only (the LM head's text rows)
            self.shape = (min(limit, self.shape[0]), *self.shape[1:])

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        t = self.reader.rows(self.name, start, stop, dtype=torch.float32)
        return (self.transform(t) if self.transform else t).numpy()

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[0 : self.shape[0]], dtype=dtype)


class _FoldedTable:
    """Rows computed on demand from (first row, block) pieces; see embedder.py for what they hold."""

    def __init__(self, shape: tuple[int, int], rows: Callable[[int, int], np.ndarray]):
        self.shape, self._rows = shape, rows

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        return self._rows(start, stop)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[0 : self.shape[0]], dtype=dtype)


def _multimodal_rows(reader, cfg) -> np.ndarray:
    """The vision and audio vocab rows of the folded embedder table (2 x 128 rows: small)."""
    from converters.gemma3n.embedder import multimodal_rows

    v_off, a_off = cfg.vision.vocab_offset, cfg.audio.vocab_offset
    mm = np.zeros((cfg.text.vocab_size - v_off, cfg.text.hidden_size), np.float32)
    for prefix, offset, eps in (("model.embed_vision", v_off, cfg.vision.rms_norm_eps),
                                ("model.embed_audio", a_off, cfg.audio.rms_norm_eps)):
        if f"{prefix}.embedding.weight" in reader:  # a dropped tower's ids are never produced: zero rows
            rows_ = multimodal_rows(reader.tensor, prefix, eps).numpy()
            mm[offset - v_off : offset - v_off + len(rows_)] = rows_
    return mm


def _embedder_table(reader, cfg) -> _FoldedTable:
    text = cfg.text
    scale = torch.tensor(text.hidden_size**0.5, dtype=torch.float32)
    name = TEXT_PREFIX + "embed_tokens.weight"
    if "model.embed_vision.embedding.weight" not in reader:  # text-only: every id is an embed_tokens row
        return _FoldedTable((text.vocab_size, text.hidden_size),
                            lambda start, stop: (reader.rows(name, start, stop, dtype=torch.float32) * scale).numpy())
    v_off, mm = cfg.vision.vocab_offset, _multimodal_rows(reader, cfg)

    def rows(start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, text.hidden_size), np.float32)
        t_stop = min(stop, v_off)
        if start < t_stop:
            out[: t_stop - start] = (reader.rows(name, start, t_stop, dtype=torch.float32) * scale).numpy()
        if stop > v_off:
            lo = max(start, v_off)
            out[lo - start :] = mm[lo - v_off : stop - v_off]
        return out

    return _FoldedTable((text.vocab_size, text.hidden_size), rows)


def _ple_table(reader, cfg) -> _Rows:
    scale = torch.tensor(cfg.text.hidden_size_per_layer_input**0.5, dtype=torch.float32)
    return _Rows(reader, TEXT_PREFIX + "embed_tokens_per_layer.weight", lambda t: t * scale)


def text_vocab(ckpt: Path, text) -> int:
    """How many ids the bundled tokenizer can decode: the LM head's rows (see TextDecoder)."""
    import sentencepiece as spm

    path = ckpt / "tokenizer.model"
    if not path.is_file():
        raise UserError(f"{ckpt} has no tokenizer.model (the SentencePiece model the phone tokenizes with): "
                        "copy it from the base checkpoint")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise UserError(f"{path} is not a SentencePiece model ({e}): copy it from the base checkpoint") from e
    _check_prompt_pieces(sp, path)
    n = sp.get_piece_size()
    if not 0 < n <= text.vocab_size:
        raise UserError(f"{path} has {n} pieces but the model's vocabulary is {text.vocab_size}: "
                        "the tokenizer does not belong to this checkpoint")
    return n


def _check_prompt_pieces(sp, path: Path) -> None:
    """Every fixed text the engine tokenizes on its own must give at least one id: the "\n\n"
    around each image/audio block and the chat template's pieces. A tokenizer that normalises
    whitespace away otherwise makes LiteRT-LM fail with an opaque "Failed to get num packed bytes"."""
    from converters.tokenizer_info import chat_template

    user, model = chat_template().split("{prompt}")
    pieces = {"the image/audio separator": "\n\n", "the user turn prefix": user, "the user turn suffix": model}
    empty = [f"{what} {text!r}" for what, text in pieces.items() if not sp.encode(text)]
    if empty:
        raise UserError(f"{path} encodes {', '.join(empty)} to no ids (it normalises whitespace away), so LiteRT-LM "
                        "cannot build the prompt; use the checkpoint's own Gemma tokenizer (remove_extra_whitespaces "
                        "off in its normalizer spec)")


def _lower_cached(module, signatures, component: str, config: dict, source: Source) -> Path:
    """Lower once per (code, shapes): building another recipe of the same model only re-splices."""
    from converters.lowering.cache import cached_graph, graph_key
    from converters.lowering.export import lower

    shapes = {k: {n: list(t.shape) for n, t in v.items()} for k, v in signatures.items()}
    key = graph_key(component, [config, shapes], [_GRAPH_CODE[component], "converters.lowering.export"])
    return cached_graph(source.graph_dir, component, key,
                        lambda tmp: lower(module, signatures, tmp, verbose=source.verbose))


def _lookup_lowerer(kind: str, table: Callable):
    """A lookup component: token_ids [1,T] -> one gather from `table(reader, cfg)`."""
    def lower(source: Source) -> Lowered:
        from converters.gemma3n.embedder import Embedder, PerLayerEmbedder

        text = source.cfg.text
        with torch.device("meta"):
            module = (Embedder(text.vocab_size, text.hidden_size) if kind == sig.EMBEDDER else
                      PerLayerEmbedder(text.vocab_size_per_layer_input, text.num_hidden_layers,
                                       text.hidden_size_per_layer_input))
        sigs = {sig.prefill_name(kind, n): {"token_ids": torch.zeros(1, n, dtype=torch.int32)} for n in source.prefill}
        sigs[sig.decode_name(kind)] = {"token_ids": torch.zeros(1, 1, dtype=torch.int32)}
        graph = _lower_cached(module, sigs, kind, text.to_hf_dict(), source)
        return Lowered(graph, {"table": table(source.reader, source.cfg)})
    return lower


def _lower_decoder(source: Source) -> Lowered:
    from converters.gemma3n.decoder import TextDecoder

    text, context = source.cfg.text, source.context
    h, n_layers, p = text.hidden_size, text.num_hidden_layers, text.hidden_size_per_layer_input
    logit_rows = text_vocab(source.ckpt, text)
    with torch.device("meta"):
        dec = TextDecoder(text, logit_rows)
    caches = dec.cache_shapes(context)

    def example(t: int) -> dict[str, torch.Tensor]:
        ex = {"embeddings": torch.zeros(1, t, h), "per_layer_embeddings": torch.zeros(1, t, n_layers, p),
              "input_pos": torch.arange(t, dtype=torch.int32), "mask": torch.zeros(1, 1, t, context)}
        ex.update({k: torch.zeros(s) for k, s in caches.items()})
        return ex

    sigs = {sig.prefill_name(sig.PREFILL_DECODE, n): example(n) for n in source.prefill}
    sigs[sig.DECODE] = example(1)
    graph = _lower_cached(dec, sigs, "decoder", {**text.to_hf_dict(), "logit_rows": logit_rows}, source)
    weights = {name: _Rows(source.reader, TEXT_PREFIX + name, limit=tuple(w.shape)[0])
               for name, w in dec.named_parameters()}
    return Lowered(graph, weights, {"cache_layers": list(dec.cache_layers), "kv_source": list(dec.kv_source)})


def _tolerance(kind: str):
    def of(source: Source, path: Path, recipe: str, report):
        """The tolerance for the weight format the written file holds (edge/parity/tolerances.py)."""
        from edge.parity import tolerances

        return tolerances.for_file(path, kind)[1]
    return of


COMPONENTS = (
    Component(key=sig.EMBEDDER, name=sig.EMBEDDER, file="embedder.tflite", kind=sig.EMBEDDER, modality="text",
              what="table -> embedder.weights", lower=_lookup_lowerer(sig.EMBEDDER, _embedder_table),
              tolerance=_tolerance(sig.EMBEDDER), external=(("table", "embedder.weights"),)),
    Component(key=sig.PER_LAYER_EMBEDDER, name=sig.PER_LAYER_EMBEDDER, file="per_layer_embedder.tflite",
              kind=sig.PER_LAYER_EMBEDDER, modality="text", what="PLE table -> per_layer_embedder.weights",
              lower=_lookup_lowerer(sig.PER_LAYER_EMBEDDER, _ple_table), tolerance=_tolerance(sig.PER_LAYER_EMBEDDER),
              external=(("table", "per_layer_embedder.weights"),)),
    Component(key=sig.PREFILL_DECODE, name="decoder", file="decoder.tflite", kind=sig.PREFILL_DECODE, modality="text",
              what="prefill_<N> + decode, weights spliced", lower=_lower_decoder,
              tolerance=_tolerance(sig.PREFILL_DECODE)),
)
