"""The PyTorch reference parity and eval compare the artifacts with: transformers'
Gemma3nForConditionalGeneration (Gemma3nForCausalLM for a text-only checkpoint) in fp32.

edge/ reaches it through the `reference` entry point (edge/plugins.py), never by import. torch is
imported at module level so that loading the entry point without it raises ModuleNotFoundError,
which parity turns into the message naming the extra to install.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edge.errors import UserError


class Reference:
    """The HF model in fp32 and the few quantities parity needs from it."""

    def __init__(self, checkpoint: str | Path, adapter: str | Path | None = None):
        import transformers

        self.torch = torch
        config = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
        # A text-only checkpoint is a Gemma3nForCausalLM: its text model is the whole model.
        klass = transformers.Gemma3nForCausalLM if config.get("model_type") == "gemma3n_text" \
            else transformers.Gemma3nForConditionalGeneration
        from edge.quiet import verbose

        if not verbose():  # its "Loading weights" bar: a reference loads in seconds, our stages say so
            transformers.utils.logging.disable_progress_bar()
        model = klass.from_pretrained(str(checkpoint), dtype=torch.float32)
        if adapter is not None:  # PEFT's own merge: the reference a --adapter build must match
            try:
                from peft import PeftModel
            except ImportError:
                raise UserError("--adapter needs PEFT for the reference: pip install peft") from None
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        self.model = model.eval()
        self.text_model = getattr(self.model.model, "language_model", self.model.model)

    def embeddings(self, ids: Sequence[int]) -> np.ndarray:
        """inputs_embeds as Gemma3nModel.forward builds them for token ids (multimodal vocab rows included)."""
        torch, m = self.torch, self.model.model
        t = torch.tensor([list(ids)])
        with torch.no_grad():
            emb = m.get_input_embeddings()(t)
            if not hasattr(m, "embed_vision"):  # text-only: every id is an embed_tokens row
                return emb.numpy()
            for tower, lo, hi in ((m.embed_vision, m.embed_vision.vocab_offset, m.embed_audio.vocab_offset),
                                  (m.embed_audio, m.embed_audio.vocab_offset, 1 << 62)):
                sel = (t >= lo) & (t < hi)
                safe = torch.where(sel, t, torch.full_like(t, lo))
                emb = torch.where(sel[..., None], tower(input_ids=safe), emb)
        return emb.numpy()

    def per_layer(self, ids: Sequence[int]) -> np.ndarray:
        with self.torch.no_grad():
            return self.text_model.get_per_layer_inputs(self.torch.tensor([list(ids)])).numpy()

    def greedy(self, prompt_ids: Sequence[int], n: int, vocab: int | None = None, **media) -> list[int]:
        """n argmax tokens with HF's own KV cache, never stopping early (no eos suppression either),
        over the first `vocab` ids only (the text ids a phone can emit; HF's `suppress_tokens` for the rest).

        media: pixel_values / input_features + input_features_mask for the first forward pass.
        """
        torch = self.torch
        with torch.no_grad():
            out = self.model(torch.tensor([list(prompt_ids)]), use_cache=True, **media)
            tokens = []
            for _ in range(n):
                tokens.append(int(out.logits[0, -1, :vocab].argmax()))
                out = self.model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
        return tokens

    def vision(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """pixels NHWC -> (encoder features [1,S,C] before embed_vision, rows [1,S+1,H]: the soft
        rows embed_vision makes of them, then the <end_of_image> token's row) as HF's forward uses."""
        torch, m = self.torch, self.model.model
        cfg = self.model.config
        s, c = cfg.vision_soft_tokens_per_image, cfg.vision_config.hidden_size
        with torch.no_grad():
            last = m.vision_tower(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), do_pooling=False,
                                  return_dict=True).last_hidden_state
            features = last.reshape(1, c, s).permute(0, 2, 1) * c**0.5  # get_image_features before embed_vision
            rows = m.embed_vision(inputs_embeds=features)
        eoi = self.embeddings([cfg.eoi_token_id])
        return features.numpy(), np.concatenate([rows.numpy(), eoi], axis=1)

    def audio_adapter(self, encoded: np.ndarray, total: int) -> np.ndarray:
        """Encoder rows [1,T,D] -> the `total` rows HF's forward splices: embed_audio's soft path,
        then the padding embedding (the last audio vocab id) up to `total`."""
        torch, m = self.torch, self.model.model
        with torch.no_grad():
            rows = m.embed_audio(inputs_embeds=torch.from_numpy(encoded)).numpy()
        pad = self.embeddings([self.model.config.text_config.vocab_size - 1])
        return np.concatenate([rows, np.repeat(pad, total - rows.shape[1], axis=1)], axis=1)

    def audio(self, features: np.ndarray) -> np.ndarray:
        """Log-mel features [T,F] of one unpadded clip -> HF's encoder rows [1,T',D] (all valid)."""
        torch = self.torch
        x = torch.from_numpy(features)[None]
        with torch.no_grad():
            out = self.model.model.get_audio_features(x, torch.zeros(x.shape[:2], dtype=torch.bool), return_dict=True)
        return out.last_hidden_state.numpy()

    def media_inputs(self, pixels: Sequence[np.ndarray], clips: Sequence[np.ndarray]) -> dict:
        """Keyword arguments of the HF forward for images (NHWC) and log-mel clips [T,F] (all valid)."""
        torch, out = self.torch, {}
        if pixels:
            out["pixel_values"] = torch.from_numpy(np.concatenate(pixels)).permute(0, 3, 1, 2)
        if clips:
            if len(clips) > 1:
                raise UserError("parity compares one audio clip per prompt")
            out["input_features"] = torch.from_numpy(clips[0])[None]
            out["input_features_mask"] = torch.ones(1, len(clips[0]), dtype=torch.bool)
        return out

    def logits(self, ids: Sequence[int], vocab: int | None = None, **media) -> np.ndarray:
        """(len(ids), vocab) softcapped logits of one forward pass (all ids by default; media as greedy's)."""
        with self.torch.no_grad():
            return self.model(self.torch.tensor([list(ids)]), **media).logits[0, :, :vocab].float().numpy()
