"""Tier 1 parity: the export-friendly text modules (eager torch) against transformers' Gemma 3n.

A small config with every text feature (sliding + full layers, KV sharing, sparsity,
AltUp, LAuReL, PLE, per-layer FFN widths), every parameter perturbed so PLE and the
AltUp correction are live. Covers one padded prefill chunk, then decode past the window.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from converters.gemma3n.decoder import TextDecoder, gaussian_std_multiplier, kv_sharing  # noqa: E402
from converters.gemma3n.embedder import PerLayerEmbedder  # noqa: E402

# fp32 on both sides, same op order except fused/ reordered reductions: observed ~4e-6
# on logits of magnitude ~1.5. 1e-4 leaves 25x margin and still catches any real bug
# (a missing PLE or AltUp term moves logits by >1e-2).
ATOL = 1e-4


@pytest.fixture(scope="module")
def hf_text():
    torch.manual_seed(0)
    cfg = transformers.Gemma3nTextConfig(
        vocab_size=300, vocab_size_per_layer_input=256, hidden_size=64, hidden_size_per_layer_input=16,
        intermediate_size=[128, 96, 128, 160, 128, 96], num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
                     "full_attention", "sliding_attention"],
        num_kv_shared_layers=2, sliding_window=6, laurel_rank=8,
        activation_sparsity_pattern=[0.95, 0.95, 0.0, 0.0, 0.0, 0.0], max_position_embeddings=256)
    model = transformers.Gemma3nForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return cfg, model


def _load(module, model):
    sd = {k[len("model."):]: v for k, v in model.state_dict().items() if k.startswith("model.")}
    own = dict(module.named_parameters())
    module.load_state_dict({k: sd[k] for k in own}, strict=True)
    return module


def test_kv_sharing_rule_matches_hf(hf_text):
    cfg, _ = hf_text
    modes = cfg.kv_sharing_modes
    src = kv_sharing(cfg.layer_types, cfg.num_kv_shared_layers)
    for i, mode in enumerate(modes):
        assert (src[i] != i) == (mode == "reuse")
        if mode == "reuse":
            assert modes[src[i]] == "store" and cfg.layer_types[src[i]] == cfg.layer_types[i]


def test_std_multiplier_is_phi_inverse():
    assert gaussian_std_multiplier(0.95) == pytest.approx(1.6448536, abs=1e-6)


def test_decoder_prefill_and_decode_match_hf(hf_text):
    cfg, model = hf_text
    dec = _load(TextDecoder(cfg), model)
    ids = torch.randint(0, cfg.vocab_size, (1, 20), generator=torch.Generator().manual_seed(1))
    context, chunk, n = 32, 16, 12
    with torch.no_grad():
        ref = model(ids).logits[0]
        emb = model.model.embed_tokens(ids)
        ple = model.model.get_per_layer_inputs(ids)
        caches = {k: torch.zeros(s) for k, s in dec.cache_shapes(context).items()}
        kv = torch.arange(context)[None]

        def run(e, p, pos):
            mask = torch.where(kv <= pos[:, None], 0.0, -1e30)[None, None]
            out = dec(e, p, pos, mask, **caches)
            caches.update({k: out[k] for k in caches})
            return out["logits"][0] if "logits" in out else None

        e = torch.zeros(1, chunk, cfg.hidden_size)
        p = torch.zeros(1, chunk, cfg.num_hidden_layers, cfg.hidden_size_per_layer_input)
        e[:, :n], p[:, :n] = emb[:, :n], ple[:, :n]  # padded chunk: garbage K/V past n is masked later
        assert run(e, p, torch.arange(chunk, dtype=torch.int32)) is None  # prefill returns caches only
        # LiteRT-LM's protocol: prefill all but the last prompt token, decode the last one.
        decoded = torch.stack([run(emb[:, t : t + 1], ple[:, t : t + 1], torch.tensor([t], dtype=torch.int32))[0]
                               for t in range(n, ids.shape[1])])
    assert len(dec.cache_layers) == 4  # 6 layers, 2 KV-shared
    torch.testing.assert_close(decoded, ref[n:], atol=ATOL, rtol=0)  # positions 12..19 > window 6


def test_per_layer_embedder_matches_hf(hf_text):
    cfg, model = hf_text
    ple = PerLayerEmbedder(cfg.vocab_size_per_layer_input, cfg.num_hidden_layers, cfg.hidden_size_per_layer_input)
    w = model.model.embed_tokens_per_layer.weight
    ple.table.data = w * torch.tensor(cfg.hidden_size_per_layer_input**0.5)
    ids = torch.tensor([[0, 5, 255, 256, 299]])  # last two are >= the PLE vocab -> row 0
    with torch.no_grad():
        assert torch.equal(ple(ids)["embeddings"], model.model.get_per_layer_inputs(ids))
