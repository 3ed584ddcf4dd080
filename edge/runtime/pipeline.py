"""Text generation: template, chunked prefill, decode loop, stop tokens, streaming, metrics.

The protocol LiteRT-LM runs (llm_litert_compiled_model_executor.cc):
1. prompt ids = bos + tokenized chat template (or the raw prompt with --no-template);
2. prefill every prompt token except the last, in the engine's chunks (`plan_prompt_prefill`);
3. `decode` the last prompt token: its logits give the first generated token;
4. feed each sampled token back through `decode` until a stop token, the token budget,
   or the end of the context.
Embeddings for every call come from the embedding lookups, so image/audio soft tokens
can later be spliced in at their placeholder ids before the decoder sees them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from edge.errors import UserError
from edge.format.manifest import ModelSummary
from edge.runtime.embedding import EmbeddingLookup
from edge.runtime.executor import Executor
from edge.runtime.metrics import GenerationMetrics, peak_rss_mib
from edge.runtime.prefill_plan import plan_prompt_prefill
from edge.runtime.sampler import Sampler, SamplerConfig
from edge.runtime.tokenizer import Tokenizer

STOP_TOKEN, MAX_TOKENS, CONTEXT_FULL = "stop_token", "max_tokens", "context_full"


@dataclass(frozen=True)
class GenerationConfig:
    max_tokens: int = 256  # generated tokens, the stop token included
    apply_template: bool = True  # wrap the prompt in the model's chat template
    truncate: bool = False  # drop the oldest prompt tokens instead of failing when the prompt overflows
    raw_prompt: bool = False  # marker strings in the prompt (<start_of_turn>, ...) become their control ids

    def __post_init__(self):
        if self.max_tokens < 1:
            raise UserError(f"--max-tokens must be at least 1, got {self.max_tokens}")


@dataclass(frozen=True)
class GenerationResult:
    prompt_ids: tuple[int, ...]  # what was fed (after truncation)
    token_ids: tuple[int, ...]  # generated, the stop token included
    text: str  # detokenized generated text, stop token excluded
    stop_reason: str  # stop_token | max_tokens | context_full
    truncated_tokens: int  # prompt tokens dropped by --truncate
    metrics: GenerationMetrics

    def to_dict(self) -> dict:
        return {
            "prompt_ids": list(self.prompt_ids),
            "token_ids": list(self.token_ids),
            "text": self.text,
            "stop_reason": self.stop_reason,
            "truncated_tokens": self.truncated_tokens,
            "metrics": self.metrics.to_dict(),
        }


class Pipeline:
    """Runs prompts through an executor with the embedding lookups and tokenizer of one model."""

    def __init__(
        self,
        executor: Executor,
        embedder: EmbeddingLookup,
        per_layer_embedder: EmbeddingLookup | None,
        tokenizer: Tokenizer,
        model: ModelSummary,
    ):
        if executor.needs_per_layer_embeddings and per_layer_embedder is None:
            raise UserError("the decoder takes per-layer embeddings but no per_layer_embedder artifact was given")
        self.executor = executor
        self.embedder = embedder
        self.per_layer_embedder = per_layer_embedder
        self.tokenizer = tokenizer
        self.model = model
        self._stop = frozenset(model.stop_tokens)

    def close(self) -> None:
        """Release the executor's and lookups' native resources."""
        self.executor.close()
        self.embedder.close()
        if self.per_layer_embedder is not None:
            self.per_layer_embedder.close()

    # ------------------------------------------------------------ prompt

    def prompt_ids(self, prompt: str, apply_template: bool = True, raw: bool = False) -> list[int]:
        """bos + the (templated) prompt; marker strings in the user's text stay text unless `raw`."""
        start = self.model.chat_template.index("{prompt}") if apply_template else 0
        text = self.model.chat_template.replace("{prompt}", prompt, 1) if apply_template else prompt
        return [self.model.tokens.bos] + self.tokenizer.encode(text, None if raw else (start, start + len(prompt)))

    def _fit_context(self, ids: list[int], config: GenerationConfig) -> tuple[list[int], int]:
        c = self.executor.context_length
        if len(ids) < c:  # LiteRT-LM refuses a prompt of `max_num_tokens` or more ("too long")
            return ids, 0
        if not config.truncate:
            raise UserError(
                f"the prompt is {len(ids)} tokens but the model's context holds {c}, the prompt and at least one "
                f"answer token (as on the phone): shorten it, pass "
                f"--truncate to drop its oldest tokens, or rebuild the artifacts with a larger --context"
            )
        # Keep bos and the newest tokens, leaving room for min(max_tokens, C/2) generated tokens.
        keep = c - min(config.max_tokens, c // 2)
        dropped = len(ids) - keep
        return [ids[0]] + ids[1 + dropped :], dropped

    # ------------------------------------------------------------ model calls

    def embed(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """(embeddings [1,n,H], per-layer embeddings [1,n,L,P] or None) for ids."""
        emb = self.embedder.lookup(ids)
        ple = self.per_layer_embedder.lookup(ids) if self.executor.needs_per_layer_embeddings else None
        return emb, ple

    def embed_at(self, ids: Sequence[int], start: int, soft: dict[int, np.ndarray] | None = None):
        """embed(ids) for positions start.., with image/audio soft-token rows spliced in (multimodal.py)."""
        emb, ple = self.embed(ids)
        if soft:
            hits = [p for p in range(start, start + len(ids)) if p in soft]
            if hits:
                emb = emb.copy()
                for p in hits:
                    emb[0, p - start] = soft[p]
        return emb, ple

    def _prefill(self, ids: Sequence[int], soft: dict[int, np.ndarray] | None = None) -> int:
        """Prefill ids at positions 0..len-1 (a prompt's all but last token, which the first decode runs),
        in the engine's calls; returns the number of executor calls."""
        chunks = plan_prompt_prefill(len(ids) + 1, self.executor.prefill_lengths, self.executor.context_length)
        for ch in chunks:
            emb, ple = self.embed_at(ids[ch.start : ch.start + ch.count], ch.start, soft)
            if ch.via_decode:
                self.executor.decode(emb, ple, ch.start)  # logits unused: this only fills the cache
            else:
                self.executor.prefill(emb, ple, np.arange(ch.start, ch.start + ch.count, dtype=np.int32))
        return len(chunks)

    def _text_logits(self, logits: np.ndarray) -> np.ndarray:
        """Only ids the tokenizer can decode are ever sampled, as on the phone (a bundle's decoder
        scores no others; older artifacts that score the image/audio ids too are cut here)."""
        return np.asarray(logits).reshape(-1)[: self.tokenizer.sp_vocab_size]

    def _decode(self, token: int, position: int) -> np.ndarray:
        emb, ple = self.embed([token])
        return self.executor.decode(emb, ple, position)

    def prefill(self, ids: Sequence[int], soft: dict[int, np.ndarray] | None = None) -> np.ndarray:
        """From an empty cache: every id but the last in the engine's prefill calls, the last
        through decode (as LiteRT-LM runs a prompt); the scores of the first answer token."""
        return self._run_prompt(ids, soft)[0]

    def _run_prompt(self, ids: Sequence[int], soft: dict[int, np.ndarray] | None) -> tuple[np.ndarray, int]:
        """prefill(ids, soft) and the number of executor calls its prefill took."""
        self.executor.reset()
        calls = self._prefill(ids[:-1], soft) if len(ids) > 1 else 0
        logits = self.executor.decode(*self.embed_at(ids[-1:], len(ids) - 1, soft), len(ids) - 1)
        return self._text_logits(logits), calls

    def decode(self, token: int, position: int) -> np.ndarray:
        """`token` at `position` after a prefill: the scores of the next token."""
        return self._text_logits(self._decode(token, position))

    # ------------------------------------------------------------ generate

    def generate(
        self,
        prompt: str | None = None,
        *,
        prompt_ids: Sequence[int] | None = None,
        config: GenerationConfig = GenerationConfig(),
        sampler: Sampler | None = None,
        on_text: Callable[[str], None] | None = None,
        soft_embeddings: dict[int, np.ndarray] | None = None,
    ) -> GenerationResult:
        """Generate from a text prompt (or ready-made prompt ids, bos included).

        soft_embeddings: position -> embedding row replacing that prompt position's lookup
        (image/audio soft tokens, see multimodal.py); positions refer to `prompt_ids`.
        """
        t0 = time.perf_counter()
        sampler = sampler or Sampler(SamplerConfig())
        ids, dropped = self._checked_prompt(prompt, prompt_ids, config)
        if soft_embeddings and dropped:
            raise UserError("a prompt with images or audio cannot be truncated: shorten the text or rebuild with a "
                            "larger --context")
        t_prefill = time.perf_counter()
        logits, calls = self._run_prompt(ids, soft_embeddings)
        token = sampler.sample(logits)
        t_first = time.perf_counter()

        generated, text, reason = self._decode_from(ids, token, config, sampler, on_text)
        t_end = time.perf_counter()

        metrics = GenerationMetrics(
            prompt_tokens=len(ids),
            generated_tokens=len(generated),
            prefill_calls=calls,
            ttft_s=t_first - t0,
            prefill_s=t_first - t_prefill,
            decode_s=t_end - t_first,
            peak_rss_mib=peak_rss_mib(),
        )
        return GenerationResult(tuple(ids), tuple(generated), text, reason, dropped, metrics)

    def _checked_prompt(self, prompt: str | None, prompt_ids: Sequence[int] | None,
                        config: GenerationConfig) -> tuple[list[int], int]:
        """The prompt's ids (made from the text unless given), fitted to the context and checked
        against the vocabulary: (ids, oldest tokens dropped)."""
        if prompt_ids is None:
            if prompt is None:
                raise ValueError("pass prompt or prompt_ids")
            prompt_ids = self.prompt_ids(prompt, config.apply_template, config.raw_prompt)
        ids, dropped = self._fit_context([int(i) for i in prompt_ids], config)
        if not ids:
            raise UserError("the prompt is empty")
        bad = [i for i in ids if not 0 <= i < self.model.vocab_size]
        if bad:
            raise UserError(f"prompt ids {bad[:5]} are outside the vocabulary [0, {self.model.vocab_size})")
        return ids, dropped

    def _decode_from(self, ids: list[int], token: int, config: GenerationConfig, sampler: Sampler,
                     on_text: Callable[[str], None] | None) -> tuple[list[int], str, str]:
        """Decode after the prompt `ids`, whose first answer token is `token`, until a stop token,
        max_tokens or a full context, streaming the text to on_text as it becomes final:
        (generated ids, text, stop reason)."""
        c = self.executor.context_length
        stream = self.tokenizer.stream()
        pieces: list[str] = []

        def emit(text: str) -> None:
            if text:
                pieces.append(text)
                if on_text is not None:
                    on_text(text)

        generated = [token]
        while True:
            if token in self._stop:
                reason = STOP_TOKEN
                break
            emit(stream.push(token))
            if len(generated) >= config.max_tokens:
                reason = MAX_TOKENS
                break
            position = len(ids) - 1 + len(generated)  # where the newest token goes
            if position >= c:
                reason = CONTEXT_FULL
                break
            token = sampler.sample(self._text_logits(self._decode(token, position)))
            generated.append(token)
        emit(stream.flush())
        return generated, "".join(pieces), reason
