"""A stand-in `.litertlm` for the desktop JNI test until our own converter's bundle exists.

It is litert-torch's own exporter (`litert_torch.generative.export_hf`, 0.10.0) run on the
project's tiny Gemma 3n checkpoint: text only, prefill 8, context 64, at its default recipe
(dynamic int8 weights: `quantization_recipe=None` is dropped, so its default applies). LITERT.md lists
that exporter's defects (it is not a faithful Gemma 3n), which do not matter here: the test
compares the JNI chain with the runtime's own Python binding on the *same* bundle, to prove
Java → JNI → C API → runtime works. ~3 min on 2 cores, hence a benchmark.

The exporter imports `tensorflow.lite.python.schema_py_generated` from one of its model
extensions; TensorFlow is not a dependency of this project and `ai_edge_litert` ships the
identical module (LITERT.md), so it is aliased for the duration of the export.

Usage: python tools/android_standin_bundle.py OUT_DIR   (prints the bundle path)
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path


def _alias_tflite_schema() -> None:
    import ai_edge_litert.schema_py_generated as schema

    for name in ("tensorflow", "tensorflow.lite", "tensorflow.lite.python"):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
            module.__path__ = []
            sys.modules[name] = module
    sys.modules["tensorflow.lite.python.schema_py_generated"] = schema
    sys.modules["tensorflow.lite.python"].schema_py_generated = schema


def build_standin(out_dir: Path) -> Path:
    """Build (or reuse) OUT_DIR/model.litertlm from the tiny checkpoint."""
    out_dir = Path(out_dir)
    bundle = out_dir / "model.litertlm"
    if bundle.exists():
        return bundle
    from converters.tiny import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(out_dir / "ckpt", seed=0, preset="tiny")
    _alias_tflite_schema()
    from litert_torch.generative.export_hf import export

    export.export(model=str(ckpt), output_dir=str(out_dir / "export"), task="text_generation",
                  prefill_lengths=[8], cache_length=64, quantization_recipe=None, bundle_litert_lm=True,
                  export_vision_encoder=False, export_audio_encoder=False, externalize_embedder=True)
    produced = out_dir / "export" / "model.litertlm"
    if not produced.exists():
        raise RuntimeError(f"litert-torch's exporter wrote no {produced}")
    produced.replace(bundle)
    return bundle


if __name__ == "__main__":
    print(build_standin(Path(sys.argv[1])))
