"""Google's LiteRT-LM engine (`litert_lm`, the runtime the phone runs) on a bundle, for comparison.

One chat turn per call, the way an app sends it: the bundle's own chat template, media as
files (the engine decodes, resizes and computes audio features itself; docs/ENGINE.md), greedy
sampling, fp32 activations (what every recipe is validated with, and what our bundles ask for).
The engine returns text, not ids; `agreed_tokens` tells how many of a reference's ids its text
reproduces.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from edge.errors import UserError


class Engine:
    def __init__(self, bundle: str | os.PathLike, benchmark: bool = False):
        import litert_lm

        from edge import quiet

        self.bundle = Path(bundle)
        if not self.bundle.is_file():
            raise UserError(f"{self.bundle}: no such bundle; build without --no-bundle to get model.litertlm")
        if not quiet.verbose():
            litert_lm.set_min_log_severity(litert_lm.LogSeverity.WARNING)  # its INFO chatter off
        from edge.format.litertlm import check, check_structure, is_ours, read_bundle

        bundle = read_bundle(self.bundle)
        # A crafted section crashes the native engine: verify every flatbuffer (and the rest) first;
        # our contract only on bundles we wrote (Google's and litert-torch's load as they are).
        problems = check(bundle, verify_hashes=False) if is_ours(bundle) else check_structure(bundle)
        if problems:
            raise UserError(f"{self.bundle} failed verification; rebuild or re-copy it:\n  " + "\n  ".join(problems))
        kinds = {s.model_type for s in bundle.sections}
        cpu = litert_lm.Backend.CPU()
        # A tower's backend only when the bundle has it: asked for one it lacks, the engine fails.
        towers = {"vision_backend": cpu} if "vision_encoder" in kinds else {}
        towers |= {"audio_backend": cpu} if "audio_encoder_hw" in kinds else {}
        # Its XNNPACK weight cache goes to our cache, not beside the bundle (the artifact directory
        # holds only what the manifest lists).
        from edge.fileio import cache_root

        cache = cache_root() / "litert-lm"
        cache.mkdir(parents=True, exist_ok=True)
        try:
            self._engine = litert_lm.Engine(str(self.bundle), backend=cpu, **towers, cache_dir=str(cache),
                                            activation_data_type=litert_lm.ActivationDataType.FLOAT32,
                                            enable_benchmark=benchmark)
        except Exception as e:  # the runtime raises RuntimeError/ValueError with its status text
            raise UserError(f"LiteRT-LM could not load {self.bundle}: {e}") from e

    def answer(self, text: str, *, images: Sequence[str | os.PathLike] = (), audio: Sequence[str | os.PathLike] = (),
               max_tokens: int = 32, stats: dict | None = None) -> str:
        """The engine's greedy reply to one user turn [images..., audio..., text]; with
        Engine(..., benchmark=True), `stats` gets its prefill/decode token counts and speeds."""
        from litert_lm import interfaces

        items = [{"type": "image", "path": str(Path(p).resolve())} for p in images]
        items += [{"type": "audio", "path": str(Path(p).resolve())} for p in audio]
        items.append({"type": "text", "text": text})
        greedy = interfaces.SamplerConfig(top_k=1, top_p=1.0, temperature=1.0, seed=0)  # k = 1: greedy
        conv = self._engine.create_conversation(sampler_config=greedy, max_output_tokens=max_tokens)
        try:
            reply = conv.send_message({"role": "user", "content": items})
            if stats is not None:
                info = conv.get_benchmark_info()
                stats.update(prefill_tokens=info.last_prefill_token_count,
                             prefill_tok_s=info.last_prefill_tokens_per_second,
                             decode_tokens=info.last_decode_token_count, decode_tok_s=info.last_decode_tokens_per_second)
        except Exception as e:
            raise UserError(f"LiteRT-LM failed on {self.bundle.name}: {e}") from e
        finally:
            conv.close()
        content = reply["content"]
        return content if isinstance(content, str) else "".join(c.get("text", "") for c in content)

    def render(self, messages: Sequence[dict]) -> str:
        """The prompt text the engine prefills for `messages` (history, then the new last message) on
        its first turn: rendered by its own template engine, placeholders in, BOS not included."""
        conv = self._engine.create_conversation(messages=list(messages[:-1]) or None)
        try:
            text = conv.render_message_to_string(dict(messages[-1]))
        finally:
            conv.close()
        if not text:  # the engine logs its template error and returns ""
            raise UserError(f"LiteRT-LM cannot render the chat template of {self.bundle.name} on this conversation "
                            "(its template language lacks some Jinja2 features; docs/ENGINE.md \"Chat template\")")
        return text

    def prompt_ids(self, messages: Sequence[dict], rows: dict[str, list[int]], tokens) -> list[int]:
        """The token ids the engine prefills for `messages` on a first turn (docs/ENGINE.md "Chat
        template"): BOS, then the rendered text split at each media placeholder, every text piece
        tokenized on its own; a media part is "\n\n" + its start token, its embedding rows
        (written as the soft-token id; `rows[kind]` per part, the image adapter's last row being
        <end_of_image>), <end_of_audio> after audio, then "\n\n"."""
        import re

        text = self.render(messages)
        ids, pos, left = [tokens.bos], 0, {k: iter(v) for k, v in rows.items()}
        for m in re.finditer(r"<image_soft_token>|<audio_soft_token>", text):
            kind = "image" if "image" in m.group(0) else "audio"
            start = "<start_of_image>" if kind == "image" else "<start_of_audio>"
            ids += self.tokenize(text[pos:m.start()] + "\n\n" + start)
            n = next(left[kind])
            ids += [tokens.image_soft] * (n - 1) + [tokens.eoi] if kind == "image" else [tokens.audio_soft] * n + [tokens.eoa]
            ids += self.tokenize("\n\n")
            pos = m.end()
        return ids + (self.tokenize(text[pos:]) if text[pos:] else [])

    def prefill_count(self, messages: Sequence[dict]) -> int:
        """How many tokens (media rows included) the engine prefills for `messages`, measured by
        sending them (one greedy token); needs Engine(..., benchmark=True)."""
        from litert_lm import interfaces

        greedy = interfaces.SamplerConfig(top_k=1, top_p=1.0, temperature=1.0, seed=0)
        conv = self._engine.create_conversation(messages=list(messages[:-1]) or None, sampler_config=greedy,
                                                max_output_tokens=1)
        try:
            conv.send_message(dict(messages[-1]))
            return int(conv.get_benchmark_info().last_prefill_token_count)
        finally:
            conv.close()

    def tokenize(self, text: str) -> list[int]:
        """`text` through the engine's own tokenizer (its replies come back as text, not ids)."""
        return list(self._engine.tokenize(text))

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._engine.detokenize(list(ids))

    def agreed_tokens(self, text: str, ids: Sequence[int]) -> int:
        """How many leading `ids` the engine's `text` spells out (its detokenization is a prefix)."""
        ids = list(ids)
        k = 0
        while k < len(ids) and text.startswith(self.detokenize(ids[: k + 1])):
            k += 1
        return k

    def first_difference(self, text: str, ids: Sequence[int]) -> int | None:
        """None when the engine's `text` is exactly `ids` detokenized, else how many leading ids it spells."""
        k = self.agreed_tokens(text, ids)
        return None if k == len(ids) and text == self.detokenize(ids) else k

    def close(self) -> None:
        self._engine.close()
