"""The decoder .tflite run through LiteRT's CompiledModel, with the KV cache held between calls.

Mirrors LiteRT-LM's `LlmLiteRtCompiledModelExecutor` on CPU (its `kInplace` allocation
policy): every prefill_<N> and decode signature shares one set of cache buffers, bound as both
the input and the output of each cache, so the DYNAMIC_UPDATE_SLICE that writes a step's K/V
updates the buffer in place instead of copying the whole cache (a ping-pong pair of sets copied
335 MB per decode step at E2B, context 4096, and held the caches twice). State tensors are found
generically: every input that is also an output of `decode` (`kv_cache_k_i` / `kv_cache_v_i`).
"""

from __future__ import annotations

import os

import numpy as np

from edge.errors import UserError
from edge.runtime.executor import Executor, causal_mask, pad_rows, padded_positions
from edge.format.signatures import (
    DECODE,
    EMBEDDINGS,
    INPUT_POS,
    LOGITS,
    MASK,
    PER_LAYER_EMBEDDINGS,
    PREFILL_DECODE,
    prefill_lengths_of,
)

_DATA_INPUTS = (EMBEDDINGS, PER_LAYER_EMBEDDINGS, INPUT_POS, MASK)


class LiteRtExecutor(Executor):
    def __init__(self, model, *, context_length: int | None = None):
        """`model` is an edge.runtime.litert_model.CompiledModelFile of a prefill_decode artifact."""
        self._m = model
        name = model.path.name
        sigs = model.signatures
        if DECODE not in sigs:
            raise UserError(f"{name}: no '{DECODE}' signature (has: {', '.join(sigs)}); not a decoder artifact")
        self._prefill = prefill_lengths_of(PREFILL_DECODE, sigs)  # N -> signature name
        self.prefill_lengths = tuple(self._prefill)
        if not self._prefill:
            raise UserError(f"{name}: no prefill_<N> signatures (has: {', '.join(sigs)})")
        dec_in, dec_out = model.input_details(DECODE), model.output_details(DECODE)
        if LOGITS not in dec_out:
            raise UserError(f"{name}: decode has no '{LOGITS}' output (outputs: {', '.join(dec_out)})")
        self._state = [n for n in dec_in if n in dec_out]
        self.vocab_size = int(dec_out[LOGITS]["shape"][-1])
        self.needs_per_layer_embeddings = PER_LAYER_EMBEDDINGS in dec_in
        self._has_mask = MASK in dec_in
        if self._has_mask:
            c = int(dec_in[MASK]["shape"][-1])
            if context_length is not None and context_length != c:
                raise UserError(f"{name}: mask is lowered for context {c}, the manifest says {context_length}")
            context_length = c
        if context_length is None:
            raise UserError(f"{name}: decode has no '{MASK}' input to read the context length from; pass it")
        self.context_length = context_length
        for sig in (DECODE, *self._prefill.values()):
            ins = model.input_details(sig)
            unknown = [n for n in ins if n not in _DATA_INPUTS and n not in self._state]
            if unknown or EMBEDDINGS not in ins or INPUT_POS not in ins:
                raise UserError(
                    f"{name}:{sig}: inputs {list(ins)} do not match the decoder contract "
                    f"({', '.join(_DATA_INPUTS)} + KV caches); unknown: {unknown or 'none'}"
                )
        self._cache = {n: model.new_input_buffer(DECODE, n) for n in self._state}  # in place: in = out
        self.reset()

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, context_length: int | None = None, num_threads: int = 0):
        from edge.runtime.litert_model import CompiledModelFile

        return cls(CompiledModelFile(path, num_threads=num_threads), context_length=context_length)

    # ------------------------------------------------------------ properties

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self._state)

    # ------------------------------------------------------------ calls

    def reset(self) -> None:
        for n, buf in self._cache.items():
            d = self._m.input_details(DECODE)[n]
            buf.write(np.zeros(d["shape"], dtype=np.dtype(d["dtype"])))

    def state(self, name: str) -> np.ndarray:
        """A copy of the current value of a cache tensor (for tests and debugging)."""
        d = self._m.input_details(DECODE)[name]
        shape = tuple(d["shape"])
        return self._cache[name].read(int(np.prod(shape)), np.dtype(d["dtype"])).reshape(shape)

    def _call(self, sig: str, emb: np.ndarray, ple: np.ndarray | None, pos: np.ndarray, want_logits: bool):
        m = self._m
        m.write(sig, EMBEDDINGS, emb)
        if self.needs_per_layer_embeddings:
            if ple is None:
                raise UserError(f"{m.path.name} needs per-layer embeddings (the per_layer_embedder artifact)")
            m.write(sig, PER_LAYER_EMBEDDINGS, ple)
        m.write(sig, INPUT_POS, pos)
        if self._has_mask:
            m.write(sig, MASK, causal_mask(pos, self.context_length))
        ins = {n: m.input_buffer(sig, n) for n in _DATA_INPUTS if n in m.input_details(sig)}
        ins.update(self._cache)
        outs = dict(self._cache)
        if want_logits:
            outs[LOGITS] = m.output_buffer(sig, LOGITS)
        m.run(sig, ins, outs)
        if want_logits:
            return m.read_output(sig, LOGITS).reshape(-1)
        return None

    def prefill(self, embeddings, per_layer_embeddings, positions) -> None:
        n = self._check_prefill(embeddings, positions)
        self._call(
            self._prefill[n],
            pad_rows(np.asarray(embeddings, np.float32), n),
            pad_rows(None if per_layer_embeddings is None else np.asarray(per_layer_embeddings, np.float32), n),
            padded_positions(positions, n),
            want_logits=False,
        )

    def decode(self, embeddings, per_layer_embeddings, position: int) -> np.ndarray:
        self._check_decode(embeddings, position)
        return self._call(
            DECODE,
            np.asarray(embeddings, np.float32),
            None if per_layer_embeddings is None else np.asarray(per_layer_embeddings, np.float32),
            np.array([position], dtype=np.int32),
            want_logits=True,
        )

    def close(self) -> None:
        self._cache.clear()
        self._m.close()
