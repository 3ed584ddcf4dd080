"""Issue 9 acceptance: `build --slice` lowers a MatFormer slice that matches the sliced reference."""

import json

from converters.build import BuildOptions, build
from converters.matformer_export import export_sliced_hf
from converters.tiny import PRESETS
from edge.format.manifest_verify import load_manifest
from edge.parity.run import run_parity


def test_sliced_build_matches_sliced_reference(tiny_e4b_ckpt, tmp_path):
    p = PRESETS["tiny-e4b"]
    kept = 15 - len(p.e2b_layers_skipped)
    spec = tmp_path / "e2b_analog.json"  # the E4B -> E2B recipe in miniature: skip a shared block, halve FFNs
    spec.write_text(json.dumps({"layers_skipped": list(p.e2b_layers_skipped),
                                "ffn_hidden_dims": [p.e2b_ffn_hidden_dim] * kept}))
    reference = export_sliced_hf(tiny_e4b_ckpt, spec, tmp_path / "sliced_hf").out_dir
    out = build(tiny_e4b_ckpt, tmp_path / "art", BuildOptions(recipe="fp32", prefill=(16,), context=80,
                                                              slice=str(spec), modalities=("text",)))
    m = load_manifest(out)
    assert m.model.num_hidden_layers == kept
    assert m.slice["layers_kept"] == [i for i in range(15) if i not in p.e2b_layers_skipped]
    assert m.slice["effective_params"] > 0
    report = run_parity(out, reference, prompts=("The for statement is used to iterate over a sequence.",),
                        max_tokens=32)
    assert report["artifacts"]["embedder"]["max_abs_error"] == 0.0
    assert report["artifacts"]["per_layer_embedder"]["max_abs_error"] == 0.0
    assert report["generation"]["greedy_match"], report["generation"]
    assert report["generation"]["tokens_compared"] >= 32
