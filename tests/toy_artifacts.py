"""A toy artifact directory with the real contract: LiteRT-LM signatures, tensor names, manifest.

Built once per test session (torch + litert-torch lower it; the simulator under test never
imports torch). The embedding tables live in external weight files (`embedder.weights`,
`per_layer_embedder.weights`) written by converters/lowering, as in a real build. The decoder is a 2-layer attention model small enough to lower in seconds
but with the real mechanics: `prefill_8`, `prefill_16` and `decode` signatures sharing two
KV cache pairs (`kv_cache_k_i` [1,1,C,D], `kv_cache_v_i` [1,1,D,C] transposed) updated by
DYNAMIC_UPDATE_SLICE at input_pos[0], an additive [1,1,T,C] mask, per-layer embeddings
mixed into each layer, and 30·tanh(x/30) softcapped logits. `Toy.reference_logits` runs the
same weights in float64 numpy over the whole sequence without any cache, so a simulator
that mishandles chunking, padding, positions, masks or cache ping-pong disagrees with it.

C = 60 with prefill lengths (8, 16) makes the end of the context reachable where no prefill
signature fits (positions 53..59 need `decode`).
"""

from __future__ import annotations

import io
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

H, L, P, D, HKV, NCACHE = 16, 2, 4, 8, 1, 2
CONTEXT = 60
PREFILL = (8, 16)
EXTRA_SPECIALS = 8  # ids beyond the SentencePiece vocab (like Gemma's eoi / soft tokens)
CHAT_TEMPLATE = "<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n"

_WORDS = (
    "the quick brown fox jumps over lazy dog hello world model user turn tokens edge phone "
    "simulate gemma café naïve straße 東京 日本語 ünïcödé 🙂 résumé"
).split()


def train_tokenizer(path: Path, *, add_dummy_prefix: bool = False, vocab_size: int = 320) -> Path:
    """A small byte-fallback SentencePiece model with Gemma's normalizer settings and turn markers."""
    import sentencepiece as spm

    r = random.Random(0)
    corpus = [" ".join(r.choice(_WORDS) for _ in range(r.randint(3, 12))) for _ in range(400)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, normalization_rule_name="identity",
        add_dummy_prefix=add_dummy_prefix, remove_extra_whitespaces=False, character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2,
    )
    path.write_bytes(buf.getvalue())
    return path


@dataclass
class Toy:
    dir: Path
    weights: dict[str, np.ndarray]
    sp_vocab: int
    vocab: int
    tokens: dict[str, int]

    def copy_to(self, dest: Path) -> Path:
        shutil.copytree(self.dir, dest)
        return dest

    def reference_logits(self, ids) -> np.ndarray:
        """Logits [V] after the last of `ids`, full-sequence float64 attention, no cache."""
        w = {k: v.astype(np.float64) for k, v in self.weights.items()}
        ids = np.asarray(ids)
        x = w["embed"][ids]  # (T, H)
        ple = w["ple"][np.where(ids < self.sp_vocab, ids, 0)].reshape(len(ids), L, P)
        t = len(ids)
        causal = np.tril(np.ones((t, t), bool))
        for i in range(NCACHE):
            h = x + ple[:, i % L] @ w[f"wp{i}"].T
            q, k, v = h @ w[f"wq{i}"].T, h @ w[f"wk{i}"].T, h @ w[f"wv{i}"].T  # (T, D)
            s = np.where(causal, q @ k.T / np.sqrt(D), -np.inf)
            a = np.exp(s - s.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            x = x + (a @ v) @ w[f"wo{i}"].T
        return 30 * np.tanh((x[-1] @ w["out"].T) / 30)


def _weights(vocab: int, sp_vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    # Scales keep the logits away from the softcap's flat region (std ~1.4, not saturated at
    # ±30) so greedy choices have clear margins (>0.02 on sampled prompts vs ~1e-5 error).
    g = np.random.default_rng(seed)
    w = {"embed": g.normal(0, 1, (vocab, H)), "ple": g.normal(0, 1, (sp_vocab, L * P)), "out": g.normal(0, 0.3, (vocab, H))}
    for i in range(NCACHE):
        w[f"wq{i}"], w[f"wk{i}"], w[f"wv{i}"] = (g.normal(0, 0.25, (D, H)) for _ in range(3))
        w[f"wo{i}"] = g.normal(0, 0.25, (H, D))
        w[f"wp{i}"] = g.normal(0, 0.25, (H, P))
    return {k: v.astype(np.float32) for k, v in w.items()}


def _lower(w: dict[str, np.ndarray], vocab: int, out: Path) -> None:
    import litert_torch
    import torch
    from litert_torch.generative.custom_ops.dynamic_update_slice import dynamic_update_slice

    tw = {k: torch.from_numpy(v) for k, v in w.items()}

    class Decoder(torch.nn.Module):
        def __init__(self, with_logits: bool):
            super().__init__()
            self.with_logits = with_logits
            for k, v in tw.items():
                if k not in ("embed", "ple"):
                    self.register_buffer(k, v.clone())

        def forward(self, embeddings, per_layer_embeddings, input_pos, mask, **caches):
            x = embeddings  # (1, T, H)
            zero = torch.zeros((), dtype=torch.int32)
            out = {}
            for i in range(NCACHE):
                h = x + torch.nn.functional.linear(per_layer_embeddings[:, :, i % L], getattr(self, f"wp{i}"))
                q = torch.nn.functional.linear(h, getattr(self, f"wq{i}"))  # (1, T, D)
                k = torch.nn.functional.linear(h, getattr(self, f"wk{i}")).unsqueeze(1)  # (1, 1, T, D)
                v = torch.nn.functional.linear(h, getattr(self, f"wv{i}")).unsqueeze(1).transpose(2, 3)  # (1, 1, D, T)
                kc = dynamic_update_slice(caches[f"kv_cache_k_{i}"], k, [zero, zero, input_pos[0], zero])
                vc = dynamic_update_slice(caches[f"kv_cache_v_{i}"], v, [zero, zero, zero, input_pos[0]])
                s = torch.matmul(q.unsqueeze(1), kc.transpose(2, 3)) / (D**0.5) + mask  # (1, 1, T, C)
                a = torch.matmul(torch.softmax(s, -1), vc.transpose(2, 3)).squeeze(1)  # (1, T, D)
                x = x + torch.nn.functional.linear(a, getattr(self, f"wo{i}"))
                out[f"kv_cache_k_{i}"], out[f"kv_cache_v_{i}"] = kc, vc
            if self.with_logits:
                logits = torch.nn.functional.linear(x[:, -1:], self.out)
                out["logits"] = 30 * torch.tanh(logits / 30)
            return out

    class Embedder(torch.nn.Module):
        def __init__(self, table, tail):
            super().__init__()
            self.table = torch.nn.Parameter(table.clone(), requires_grad=False)
            self.tail = tail

        def forward(self, token_ids):
            e = torch.nn.functional.embedding(token_ids, self.table)
            return {"embeddings": e.reshape(1, token_ids.shape[1], *self.tail)}

    def dec_example(t):
        ex = dict(
            embeddings=torch.zeros(1, t, H), per_layer_embeddings=torch.zeros(1, t, L, P),
            input_pos=torch.arange(t, dtype=torch.int32), mask=torch.zeros(1, 1, t, CONTEXT),
        )
        for i in range(NCACHE):
            ex[f"kv_cache_k_{i}"] = torch.zeros(1, HKV, CONTEXT, D)
            ex[f"kv_cache_v_{i}"] = torch.zeros(1, HKV, D, CONTEXT)
        return ex

    prefill, decode = Decoder(False).eval(), Decoder(True).eval()
    conv = None
    for n in PREFILL:
        conv = (conv or litert_torch).signature(f"prefill_{n}", prefill, sample_kwargs=dec_example(n))
    conv.signature("decode", decode, sample_kwargs=dec_example(1)).convert().export(str(out / "decoder.tflite"))

    # The tables go to external weight files beside their models, as `gemma3n-edge build`
    # does (graph lowered with the table as an input, then spliced: converters/lowering).
    from converters.lowering import lower, splice_weights

    for stem, kind, table, tail in (
        ("embedder", "embedder", tw["embed"], (H,)),
        ("per_layer_embedder", "per_layer_embedder", tw["ple"], (L, P)),
    ):
        sigs = {f"prefill_{kind}_{n}": {"token_ids": torch.zeros(1, n, dtype=torch.int32)} for n in PREFILL}
        sigs[f"decode_{kind}"] = {"token_ids": torch.zeros(1, 1, dtype=torch.int32)}
        graph = out / f".{stem}.graph.tflite"
        lower(Embedder(table, tail).eval(), sigs, graph)
        splice_weights(graph, out / f"{stem}.tflite", {"table": table.numpy()}, "fp32", component=kind,
                       external={"table": f"{stem}.weights"})
        graph.unlink()


def write_toy_manifest(directory: Path, sp_vocab: int, vocab: int, tokens: dict[str, int]) -> None:
    from edge.format import contract
    from edge.format import manifest as mf
    from edge.format.signatures import EMBEDDER, PER_LAYER_EMBEDDER, SignatureSpec, TensorSpec

    def declared(kind: str, **caches) -> dict[str, SignatureSpec]:  # what the contract says for the toy sizes
        sigs = contract.instantiate(kind, {"H": H, "L": L, "P": P, "C": CONTEXT, "V": vocab}, PREFILL, **caches)
        return {k: SignatureSpec(*({n: TensorSpec(tuple(t["shape"]), t["dtype"]) for n, t in s[side].items()}
                                   for side in ("inputs", "outputs"))) for k, s in sigs.items()}

    model = mf.ModelSummary(
        architecture="ToyGemma3nDecoder", hidden_size=H, num_hidden_layers=L, hidden_size_per_layer_input=P,
        vocab_size=vocab, vocab_size_per_layer_input=sp_vocab, context_length=CONTEXT, sliding_window=CONTEXT,
        final_logit_softcapping=30.0, prefill_lengths=PREFILL, tokens=mf.SpecialTokens(**tokens),
        stop_tokens=(tokens["eos"], tokens["end_of_turn"]), chat_template=CHAT_TEMPLATE,
    )
    tol = mf.Tolerance(1e-4, "toy fp32 model: XNNPACK vs float64 numpy reference")
    artifacts = {
        "decoder": mf.ArtifactSpec(
            "decoder.tflite", "prefill_decode",
            declared("prefill_decode", caches=((HKV, D),) * NCACHE),
            tolerance=tol,
        ),
        "embedder": mf.ArtifactSpec("embedder.tflite", EMBEDDER, declared(EMBEDDER),
                                    ("embedder.weights",), tolerance=tol),
        "per_layer_embedder": mf.ArtifactSpec(
            "per_layer_embedder.tflite", PER_LAYER_EMBEDDER, declared(PER_LAYER_EMBEDDER),
            ("per_layer_embedder.weights",), tolerance=tol,
        ),
    }
    names = ["decoder.tflite", "embedder.tflite", "embedder.weights", "per_layer_embedder.tflite",
             "per_layer_embedder.weights", "tokenizer.model"]
    m = mf.Manifest(
        format=mf.FORMAT, format_version=mf.FORMAT_VERSION, generator="tests/toy_artifacts.py", model=model,
        recipe={"name": "fp32"}, slice=None, files={n: mf.file_entry(directory / n) for n in names},
        artifacts=artifacts,
    )
    mf.write_manifest(directory, m)


def build_toy(directory: Path) -> Toy:
    import sentencepiece as spm

    directory.mkdir(parents=True, exist_ok=True)
    train_tokenizer(directory / "tokenizer.model")
    sp_vocab = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model")).get_piece_size()
    vocab = sp_vocab + EXTRA_SPECIALS
    tokens = {"pad": 0, "eos": 1, "bos": 2, "start_of_turn": 4, "end_of_turn": 5,
              "eoi": sp_vocab, "image_soft": sp_vocab + 1}
    w = _weights(vocab, sp_vocab)
    _lower(w, vocab, directory)
    write_toy_manifest(directory, sp_vocab, vocab, tokens)
    return Toy(directory, w, sp_vocab, vocab, tokens)


_BUILT: dict[str, Toy] = {}


def session_toy(tmp_path_factory) -> Toy:
    """The toy artifacts, built once per pytest session whichever test file asks first."""
    if "toy" not in _BUILT:
        _BUILT["toy"] = build_toy(tmp_path_factory.mktemp("toy_artifacts"))
    return _BUILT["toy"]
