"""Parity tolerances of the text artifacts, per stored weight format: one table, data.

`build` writes these into the manifest (for the reader) and `parity` applies them with the format
it reads from the files themselves, never the manifest's numbers or recipe name (both editable):
a quantized file is judged by the quantized bounds, an fp32 file by the fp32 ones.

Table lookups (embedder, per-layer embedder) have analytic bounds, relative to the largest |value|
of the reference row (the quantizers are per row or per block within a row, converters/quant):
  float32  copied bit for bit: 0;
  float16  round to nearest: |err| <= 2^-11 |w| <= 2^-11 max|row|;
  int8     scale = max|row| / 127, rint: |err| <= scale / 2 = max|row| / 254;
  int4     scale = max|block| / 7 rounded through bf16 (relative 2^-8) then fp16, rint and clip to
           [-8, 7]: |err| <= scale / 2 (1 + 2^-8) <= max|row| / 13.9; 1/13 leaves room for fp16.
The decoder has no closed form (errors compound over layers): its logits bounds are set from the
worst measured by tools/measure_text_tolerances.py (benchmarks/text_tolerances.json), with a margin
of ~1.5-3x, and a wrong model lands far outside every one of them.
"""

from __future__ import annotations

from pathlib import Path

from edge.format.manifest import Tolerance

LEVELS = ("float32", "float16", "int8", "int4")  # most to least precise
TEXT_KINDS = ("embedder", "per_layer_embedder", "prefill_decode")


TABLE = {
    "float32": Tolerance(0.0, "a table lookup: fp32 rows are copied bit for bit", row_relative=True),
    "float16": Tolerance(2.0**-11, "fp16 table: round to nearest, |err| <= 2^-11 x the row's max |value|",
                             row_relative=True),
    "int8": Tolerance(1 / 254, "int8 per-row table: |err| <= scale/2 = the row's max |value| / 254",
                          row_relative=True),
    "int4": Tolerance(1 / 13, "int4 blockwise table: |err| <= scale/2 (bf16/fp16-rounded scale) "
                                  "<= the row's max |value| / 13", row_relative=True),
}

# Measured on the trained tiny model (benchmarks/text_tolerances.json), worst step of 4 prompts x 32:
#   fp32 max abs 2.6e-5; fp16 0.045, KL 1.3e-6; int8 0.93, cosine 0.998, top-1 0.99, KL 1.4e-3;
#   int4-b32 13.2, cosine 0.895, top-1 0.77, KL 0.21 (the tiny model's 64-wide rows average little
#   noise away; real sizes do better); a wrong model: 32, cosine -0.1, top-1 0, KL 16.5.
# The perturbed random model is noisier under quantization (int8 top-1 0.75, int4 0.20): random
# weights are not a model, so quantized parity is judged on trained weights.
DECODER = {
    "float32": Tolerance(1e-3, "fp32 end to end; XNNPACK and PyTorch differ only in summation order "
                                   "(measured 2.6e-5 trained, 2.0e-4 random, logits up to ~16)",
                             min_cosine=0.99999, min_top1=0.98, max_kl_mean=1e-6),
    "float16": Tolerance(0.5, "fp16 weights, fp32 compute: measured max abs 0.045 trained / 0.23 random, "
                                  "KL mean 1.3e-6 / 1.1e-4",
                             min_cosine=0.999, min_top1=0.95, max_kl_mean=1e-3),
    "int8": Tolerance(3.0, "int8 per-channel weights, dynamic int8 activations: measured on the trained tiny "
                               "model max abs 0.93, cosine 0.998, top-1 0.99, KL mean 1.4e-3",
                          min_cosine=0.99, min_top1=0.9, max_kl_mean=0.01),
    "int4": Tolerance(20.0, "int4 blockwise weights: measured on the trained tiny model (int4-b32) max abs "
                                "13.2, cosine 0.895, top-1 0.77, KL mean 0.21; logits are softcapped to +-30",
                          min_cosine=0.8, min_top1=0.6, max_kl_mean=0.5),
}


def level_of(constant_dtype_counts: dict[str, int]) -> str:
    """The least precise weight format among a file's constants (int32 shape constants ignored)."""
    present = [lv for lv in LEVELS if constant_dtype_counts.get(lv)]
    return present[-1] if present else "float32"


def for_file(path: str | Path, kind: str) -> tuple[str, Tolerance]:
    """(weight format, bound) of a text artifact file, by the formats its constants are stored in."""
    from edge.format.tflite import summarize

    level = level_of(summarize(path).constant_dtype_counts)
    return level, (TABLE if kind in ("embedder", "per_layer_embedder") else DECODER)[level]
