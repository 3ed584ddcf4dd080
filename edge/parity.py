"""`gemma3n-edge parity`: run the artifacts and the PyTorch reference on the same prompts.

The report is data, not a bool (STYLE.md §8): per artifact max abs / relative error and
cosine; per decode step the same plus top-1/top-5 agreement and KL(ref || artifacts);
and a free-running greedy comparison (match, tokens compared, first divergence).

Decoder steps are teacher-forced with the reference's own greedy tokens, so every step
compares the same context even after a divergence. The reference is transformers'
Gemma3nForConditionalGeneration in fp32, imported lazily: `edge/` itself stays torch-free.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge.errors import UserError

DEFAULT_PROMPTS = (
    "The for statement is used to iterate over the elements of a sequence.",
    "Explain what a dictionary is.",
)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Max abs / relative error and cosine of two tensors of the same shape."""
    ref, got = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    err = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    denom = float(np.linalg.norm(ref) * np.linalg.norm(got))
    return {"max_abs_error": err, "max_rel_error": err / scale if scale else err,
            "cosine": float(ref @ got / denom) if denom else 1.0}


def compare_rows(ref: np.ndarray, got: np.ndarray, rows: int) -> dict[str, float]:
    """compare() of `rows` looked-up table rows, plus the worst row's max |error| / max |reference value|
    (the quantizers' error bounds are per table row: edge/tolerances.py)."""
    out = compare(ref, got)
    ref = np.asarray(ref, np.float64).reshape(rows, -1)
    err = np.abs(ref - np.asarray(got, np.float64).reshape(ref.shape)).max(-1)
    scale = np.abs(ref).max(-1)
    rel = np.where(scale > 0, err / np.where(scale > 0, scale, 1), np.where(err > 0, np.inf, 0.0))
    out["max_row_relative_error"] = float(rel.max()) if rel.size else 0.0
    return out


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    out = compare(ref, got)
    p, q = _softmax(ref.astype(np.float64)), _softmax(got.astype(np.float64))
    out["kl"] = float(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30))))
    out["top1"] = bool(ref.argmax() == got.argmax())
    out["top5"] = bool(ref.argmax() in np.argsort(-got)[:5])
    return out


# ----------------------------------------------------------------------------- reference side


def check_reference_dir(path: str | Path) -> None:
    """A local checkpoint directory whose safetensors files are whole (header and data within the file)."""
    import json
    import struct

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--reference {path}: no such directory; pass the Hugging Face checkpoint directory the "
                        "artifacts were built from (config.json, *.safetensors)")
    if not (path / "config.json").is_file():
        raise UserError(f"--reference {path}: no config.json; pass a Hugging Face checkpoint directory")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"--reference {path}: no *.safetensors weights in it")
    for f in files:
        size = f.stat().st_size
        with f.open("rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            try:
                header = json.loads(fh.read(n).decode("utf-8")) if 0 <= n <= size - 8 else None
            except (UnicodeDecodeError, ValueError, RecursionError):
                header = None
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"
                and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)] if isinstance(header, dict) \
            else None
        if ends is None or 8 + n + max(ends, default=0) > size:
            raise UserError(f"--reference {f}: the safetensors file is truncated or corrupt; download or "
                            "export the checkpoint again")


class Reference:
    """The HF model in fp32 and the few quantities parity needs from it."""

    def __init__(self, checkpoint: str | Path, adapter: str | Path | None = None):
        import json

        import torch
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


# ----------------------------------------------------------------------------- artifact side


def _decoder_steps(pipeline, seq: Sequence[int], prompt_len: int, soft: dict | None = None) -> list[np.ndarray]:
    """Teacher-forced decode logits for positions prompt_len-1 .. len(seq)-2, LiteRT-LM style
    (soft: the prompt's image/audio rows by position)."""
    ex = pipeline.executor
    ex.reset()
    if prompt_len > 1:
        pipeline._prefill(list(seq[: prompt_len - 1]), soft)
    return [pipeline._text_logits(ex.decode(*pipeline.embed_at([seq[pos]], pos, soft), pos))
            for pos in range(prompt_len - 1, len(seq) - 1)]


def greedy_tokens(pipeline, prompt_ids: Sequence[int], n: int, soft: dict | None = None) -> list[int]:
    """Exactly n argmax tokens from the artifacts (no stop tokens), soft-token rows spliced in."""
    ex = pipeline.executor
    ex.reset()
    ids = list(prompt_ids)
    pipeline._prefill(ids[:-1], soft)
    token, pos, out = ids[-1], len(ids) - 1, []
    for _ in range(n):
        token = int(np.argmax(pipeline._text_logits(ex.decode(*pipeline.embed([token]), pos))))
        out.append(token)
        pos += 1
    return out


@dataclass(frozen=True)
class Case:
    """One prompt compared across HF, the simulator and the engine."""

    name: str
    text: str
    images: tuple[str, ...] = ()
    audio: tuple[str, ...] = ()
    known: str = ""  # how the phone's preprocessing (mirrored by the simulator) differs from HF's


RESIZE_NOTE = ("the engine resizes images with its own filter (stb, sRGB-aware Catmull-Rom), which the "
               "simulator mirrors; HF uses Pillow bilinear: equal only at the encoder's size (docs/ENGINE.md)")


def default_cases(manifest, workdir: str | Path, prompts: Sequence[str] = DEFAULT_PROMPTS) -> list[Case]:
    """The text prompts, plus for each tower the media that exercise it: an image at the encoder's
    size and one it must resize; a 2.5 s and a 30 s clip (edge/samples.py, written to workdir)."""
    from edge import samples

    workdir = Path(workdir)
    cases = [Case(f"text {i + 1}", p) for i, p in enumerate(prompts)]
    kinds = {a.kind for a in manifest.artifacts.values()}
    if "vision_encoder" in kinds:
        (shape,) = [tuple(t.shape) for s in manifest.artifact("vision_encoder").signatures.values()
                    for t in s.inputs.values()]
        h, w = shape[1:3]
        exact = samples.picture(workdir / "picture_encoder_size.png", h, w)
        other = samples.picture(workdir / "picture_resized.png", h * 3 // 2 + 7, w + 29)
        cases += [Case("image (encoder size)", "What is in this picture?", images=(str(exact),)),
                  Case("image (resized)", "What is in this picture?", images=(str(other),), known=RESIZE_NOTE)]
    if "audio_encoder_hw" in kinds:
        for seconds in (2.5, 30.0):
            clip = samples.voice_clip(workdir / f"clip_{seconds:g}s.wav", seconds)
            cases.append(Case(f"audio {seconds:g} s", "What is said here?", audio=(str(clip),)))
    return cases


_CHECK_OF_KIND = {"prefill_decode": "decoder", "audio_encoder_hw": "audio_encoder"}
ORDER = ("embedder", "per_layer_embedder", "vision_encoder", "vision_adapter", "audio_encoder", "audio_adapter",
         "end_of_audio", "decoder")  # the order data flows: the first one out of tolerance is the cause


def _tower_checks(pipeline, builder, ref: Reference, case: Case, checks: dict) -> tuple[list, list, float]:
    """Each tower artifact fed the reference's own inputs, against the reference's outputs (so an
    error is attributed to the artifact that makes it). Returns the case's (pixels, clips) for HF,
    and how far HF's pixels are from the ones the phone (and the simulator) use."""
    from edge.audio import AudioFeatureExtractor, load_audio
    from edge.image import ImageProcessorConfig, load_image, load_image_as_engine

    pixels, clips, gap = [], [], 0.0
    for path in case.images:
        tower = builder.tower("vision")
        size = tower.input_shape[1:3]
        px = load_image(path, replace(ImageProcessorConfig.from_checkpoint(builder.dir), size=size))
        gap = max(gap, float(np.abs(px - load_image_as_engine(path, size)).max()))
        pixels.append(px)
        features, rows = ref.vision(px)
        _merge(checks, "vision_encoder", compare(features, tower.encode(px)))
        _merge(checks, "vision_adapter", compare(rows, tower.adapt(features)))
    for path in case.audio:
        tower = builder.tower("audio")
        feats = AudioFeatureExtractor.from_checkpoint(builder.dir)(load_audio(path)).features
        clips.append(feats)
        want = ref.audio(feats)
        enc = tower.encode(feats)
        n, total = want.shape[1], enc["features"].shape[1]
        _merge(checks, "audio_encoder", compare(want, enc["features"][:, :n]))
        hf_in = np.zeros_like(enc["features"])
        hf_in[:, :n] = want
        got = tower.adapt({"mask": np.ones((1, total), bool), "features": hf_in})
        _merge(checks, "audio_adapter", compare(ref.audio_adapter(want, total), got))
    if case.audio:
        _merge(checks, "end_of_audio", compare(ref.embeddings([pipeline.model.tokens.eoa]), _end_of_audio(builder)))
    return pixels, clips, gap


def _end_of_audio(builder) -> np.ndarray:
    from edge.runtime.litert_model import CompiledModelFile

    model = CompiledModelFile(builder.dir / builder.manifest.artifact("end_of_audio").file)
    try:
        (row,) = model.run_arrays(next(iter(model.signatures)), {}).values()
    finally:
        model.close()
    return row


def _merge(checks: dict, name: str, stats: dict) -> None:
    """Worst case over every input the artifact was checked on."""
    old = checks.get(name)
    if old is None:
        checks[name] = {**stats, "inputs": 1}
        return
    checks[name] = {"max_abs_error": max(old["max_abs_error"], stats["max_abs_error"]),
                    "max_rel_error": max(old["max_rel_error"], stats["max_rel_error"]),
                    "cosine": min(old["cosine"], stats["cosine"]), "inputs": old["inputs"] + 1}


def until_stop(ids: Sequence[int], stops) -> list[int]:
    out = []
    for i in ids:
        if i in stops:
            break
        out.append(int(i))
    return out


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return k
    return None if len(a) == len(b) else min(len(a), len(b))


def run_parity(artifacts: str | Path, reference: str | Path, *, prompts: Sequence[str] = DEFAULT_PROMPTS,
               max_tokens: int = 32, cases: Sequence[Case] | None = None, engine: bool = True,
               workdir: str | Path | None = None, adapter: str | Path | None = None) -> dict[str, Any]:
    """Compare the artifact directory with the reference checkpoint (with the LoRA `adapter` merged
    by PEFT, for a `build --adapter`) and, when the directory holds model.litertlm, with Google's
    engine on it; returns the report dict (see summary_lines)."""
    import tempfile

    from edge.runtime.loader import load_pipeline
    from edge.runtime.multimodal import MultimodalPromptBuilder

    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("parity needs the PyTorch reference: install gemma3n-edge[convert] (torch, transformers)") from None
    artifacts = Path(artifacts)
    check_reference_dir(reference)  # before anything: a missing path is never taken for a hub id
    pipeline, manifest = load_pipeline(artifacts)
    try:
        identity = reference_identity(manifest, reference, adapter)
        ref = Reference(reference, adapter)
    except BaseException:
        pipeline.close()
        raise
    builder = MultimodalPromptBuilder(pipeline, artifacts, manifest)
    bundle = artifacts / "model.litertlm"
    runner = None
    with tempfile.TemporaryDirectory(prefix="gemma3n-edge-parity-") as tmp:
        try:
            cases = list(cases) if cases is not None else default_cases(manifest, workdir or tmp, prompts)
            if engine and bundle.is_file():
                from edge.runtime.engine import Engine

                runner = Engine(bundle)
            report = _compare(pipeline, manifest, builder, ref, runner, cases, max_tokens)
        finally:
            builder.close()
            pipeline.close()
            if runner is not None:
                runner.close()
    report.update({"artifacts_dir": str(artifacts), "reference": str(reference),
                   "engine": str(bundle) if runner is not None else None, "reference_identity": identity})
    if identity["matches"] is False:  # numbers against another model say nothing about these artifacts
        report["ok"] = False
    return report


def reference_identity(manifest, reference: str | Path, adapter: str | Path | None = None) -> dict[str, Any]:
    """Whether `reference` (+ `adapter`) is what the artifacts were built from, by the sha256 of its files
    (recorded by build; for a slice, an export of the same slice from the same source also counts)."""
    built = manifest.extra.get("adapter") if isinstance(manifest.extra.get("adapter"), dict) else None
    if built is None and adapter is not None:
        return {"matches": False, "detail": "the artifacts were built without an adapter; drop --adapter"}
    if built is not None:
        from edge.fileio import sha256_file

        if adapter is None:
            return {"matches": False, "detail": f"the artifacts were built with the adapter {built.get('path')}; "
                                                "pass it with --adapter"}
        got = {n: sha256_file(Path(adapter) / n) if (Path(adapter) / n).is_file() else None for n in built["files"]}
        if got != built["files"]:
            return {"matches": False, "detail": f"--adapter {adapter} is not the adapter the artifacts were built "
                                                f"with ({built.get('path')})"}
    return _checkpoint_identity(manifest, reference)


def _checkpoint_identity(manifest, reference: str | Path) -> dict[str, Any]:
    import json

    from edge.fileio import checkpoint_digests

    reference = Path(reference)
    source = manifest.extra.get("source") if isinstance(manifest.extra.get("source"), dict) else {}
    recorded = source.get("files")
    if not isinstance(recorded, dict) or not recorded:
        return {"matches": None, "detail": "the manifest records no checkpoint hashes (built by an older "
                                           "version): the reference could not be checked"}
    built_from = source.get("checkpoint", "?")
    if manifest.slice:
        record = reference / "matformer_slice.json"
        try:
            exported = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
        except (OSError, UnicodeDecodeError, ValueError):
            exported = {}
        if isinstance(exported, dict) and exported.get("source_files") == recorded \
                and exported.get("spec") == manifest.slice.get("spec"):
            return {"matches": True, "detail": f"the same slice exported from the checkpoint built from ({built_from})"}
        return {"matches": False, "detail": f"the artifacts are slice {manifest.slice.get('name')!r} of {built_from}; "
                                            "the reference must be that slice exported with `gemma3n-edge slice "
                                            "--export-hf` from the same checkpoint"}
    got = checkpoint_digests(reference)
    if got == recorded:
        return {"matches": True, "detail": f"sha256 of {', '.join(sorted(recorded))} equal to the build's"}
    differ = sorted(n for n in set(recorded) | set(got) if recorded.get(n) != got.get(n))
    return {"matches": False, "detail": f"the reference is not the checkpoint these artifacts were built from "
                                        f"({built_from}): {', '.join(differ)} differ; pass that checkpoint"}


def _compare(pipeline, manifest, builder, ref: Reference, runner, cases: Sequence[Case], n_max: int) -> dict:
    model = manifest.model
    vocab = pipeline.tokenizer.sp_vocab_size  # what any of the three may emit: text ids
    stops = set(model.stop_tokens)
    checks: dict[str, dict] = {}
    probe = sorted({*pipeline.prompt_ids(cases[0].text),
                    *(v for k, v in model.tokens.items().items() if k in ("eoi", "image_soft", "eoa", "audio_soft"))})
    checks["embedder"] = compare_rows(ref.embeddings(probe), pipeline.embedder.lookup(probe), len(probe))
    if pipeline.per_layer_embedder is not None:
        checks["per_layer_embedder"] = compare_rows(ref.per_layer(probe), pipeline.per_layer_embedder.lookup(probe),
                                                    len(probe))
    steps, rows = [], []
    for ci, case in enumerate(cases):
        prompt = builder.build(case.text, images=case.images, audio=case.audio)
        ids = prompt.ids
        n = min(n_max, model.context_length - len(ids))  # stay inside the KV cache
        if n < 1:
            raise UserError(f"{case.name}: the prompt is {len(ids)} tokens and does not fit the context "
                            f"({model.context_length}); use a shorter prompt or rebuild with a larger --context")
        pixels, clips, gap = _tower_checks(pipeline, builder, ref, case, checks)
        known = case.known or (f"HF's image processor and the engine's decoder/resize give other pixels (up to "
                               f"{gap * 255:.0f}/255 apart); the simulator mirrors the engine (docs/ENGINE.md)"
                               if gap > 0 else "")
        hf_ids = ref.greedy(ids, n, vocab, **ref.media_inputs(pixels, clips))
        if not case.images and not case.audio:  # the decoder alone, teacher-forced on HF's path
            ref_logits = ref.logits(ids + hf_ids, vocab)
            for k, g in enumerate(_decoder_steps(pipeline, ids + hf_ids, len(ids))):
                steps.append({"case": ci, "step": k, **compare_logits(ref_logits[len(ids) - 1 + k], g)})
        sim_ids = greedy_tokens(pipeline, ids, n, prompt.soft)
        row = {"name": case.name, "prompt": case.text, "images": list(case.images), "audio": list(case.audio),
               "known": known, "prompt_tokens": len(ids), "tokens": n,
               "hf": {"ids": hf_ids, "text": pipeline.tokenizer.decode(until_stop(hf_ids, stops))},
               "simulator": {"ids": sim_ids, "text": pipeline.tokenizer.decode(until_stop(sim_ids, stops))},
               "engine": None, "pairs": {"hf/simulator": {"first_difference": _first_difference(hf_ids, sim_ids)}}}
        if runner is not None:
            text = runner.answer(case.text, images=case.images, audio=case.audio, max_tokens=n)
            row["engine"] = {"text": text}
            for who, got in (("hf", hf_ids), ("simulator", sim_ids)):
                first = runner.first_difference(text, until_stop(got, stops))
                row["pairs"][f"{who}/engine"] = {"first_difference": first}
        rows.append(row)
    return _verdict(manifest, builder.dir, checks, steps, rows)


def _text_tolerances(manifest, directory: Path) -> dict[str, tuple[str, Any]]:
    """check name -> (weight format read from the file, edge/tolerances.py bound): never the manifest's
    numbers or recipe name, which anyone can edit."""
    from edge import tolerances

    return {_CHECK_OF_KIND.get(a.kind, a.kind): tolerances.for_file(directory / a.file, a.kind)
            for a in manifest.artifacts.values() if a.kind in tolerances.TEXT_KINDS}


def _judge(name: str, entry: dict, text_tol: dict, manifest_tol, gen: dict) -> list[str]:
    """Set entry's tolerance fields; return the criteria it exceeds (empty: within tolerance)."""
    if name in text_tol:
        level, t = text_tol[name]
        entry |= {"weights": level, "tolerance": t.max_abs, "why": t.why}
        if t.row_relative:
            entry["tolerance_applies_to"] = "max_row_relative_error"
            # fp32 rows are copied (bound 0, exact); otherwise allow float32 rounding of q * scale
            bound = t.max_abs * (1 + 1e-6) + (1e-7 if t.max_abs else 0.0)
            return [] if entry["max_row_relative_error"] <= bound else [
                f"row error {entry['max_row_relative_error']:.3g} x row max > {t.max_abs:.3g}"]
        bad = [] if entry["max_abs_error"] <= t.max_abs else [f"max abs {entry['max_abs_error']:.3g} > {t.max_abs:g}"]
        if t.min_cosine is not None and entry["cosine"] < t.min_cosine:
            bad.append(f"cosine {entry['cosine']:.4f} < {t.min_cosine:g}")
        if t.min_top1 is not None and gen.get("top1_agreement", 1.0) < t.min_top1:
            bad.append(f"top-1 {gen['top1_agreement']:.1%} < {t.min_top1:.0%}")
        if t.max_kl_mean is not None and gen.get("kl_mean", 0.0) > t.max_kl_mean:
            bad.append(f"KL mean {gen['kl_mean']:.3g} > {t.max_kl_mean:g}")
        entry |= {"min_cosine": t.min_cosine, "min_top1": t.min_top1, "max_kl_mean": t.max_kl_mean}
        return bad
    entry["tolerance"] = manifest_tol.max_abs if manifest_tol is not None else None
    if manifest_tol is None or not math.isfinite(manifest_tol.max_abs):
        return [f"no finite tolerance declared ({None if manifest_tol is None else manifest_tol.max_abs})"]
    return [] if entry["max_abs_error"] <= manifest_tol.max_abs else [
        f"max abs {entry['max_abs_error']:.3g} > {manifest_tol.max_abs:g}"]


def _verdict(manifest, directory: Path, checks: dict, steps: list, rows: list) -> dict:
    """Tolerances, causes and the overall result. Every compared artifact needs a finite tolerance
    (none passes by default); a divergence is blamed on the first artifact out of tolerance."""
    if steps:
        checks["decoder"] = {"max_abs_error": max(s["max_abs_error"] for s in steps),
                             "max_rel_error": max(s["max_rel_error"] for s in steps),
                             "cosine": min(s["cosine"] for s in steps), "inputs": len(steps)}
    gen: dict[str, Any] = {}
    if steps:
        gen |= {"top1_agreement": float(np.mean([s["top1"] for s in steps])),
                "top5_agreement": float(np.mean([s["top5"] for s in steps])),
                "kl_mean": float(np.mean([s["kl"] for s in steps])), "kl_max": float(np.max([s["kl"] for s in steps]))}
    text_tol = _text_tolerances(manifest, Path(directory))
    manifest_tol = {_CHECK_OF_KIND.get(a.kind, a.kind): a.tolerance for a in manifest.artifacts.values()}
    for name, entry in checks.items():
        entry["exceeded"] = _judge(name, entry, text_tol, manifest_tol.get(name), gen)
        entry["within_tolerance"] = not entry["exceeded"]
    failing = [n for n in ORDER if n in checks and not checks[n]["within_tolerance"]]
    fp32 = text_tol.get("decoder", ("",))[0] == "float32"  # read from the file, not the manifest's recipe
    ok = not failing
    for row in rows:
        for pair, res in row["pairs"].items():
            k = res["first_difference"]
            res["equal"] = k is None
            if k is None:
                continue
            with_hf = pair.startswith("hf/")
            if failing:
                res["cause"] = failing[0]
            elif with_hf and row["known"]:
                res["cause"] = row["known"]
            elif pair.endswith("/engine"):
                res["cause"] = "the engine's prompt assembly or preprocessing (every artifact is within tolerance)"
            else:
                res["cause"] = "decoder numerics at a near-tie (every artifact is within tolerance)"
            # fp32 must reproduce HF where the phone's preprocessing is HF's; for any recipe the
            # simulator must say what the engine says.
            must_hold = pair == "simulator/engine" or (fp32 and not row["known"])
            ok = ok and not must_hold
    firsts = [(i, r["pairs"]["hf/simulator"]["first_difference"]) for i, r in enumerate(rows)]
    diverged = [(i, k) for i, k in firsts if k is not None]
    gen = {"greedy_match": not diverged, "tokens_compared": sum(r["tokens"] for r in rows),
           "first_divergence": {"case": diverged[0][0], "step": diverged[0][1]} if diverged else None, **gen}
    return {"recipe": manifest.recipe.get("name"), "artifacts": checks, "steps": steps, "cases": rows,
            "generation": gen, "failing": failing, "ok": ok}


# ----------------------------------------------------------------------------- output


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The artifact table, then one line per prompt: HF / simulator / engine, same or where they part."""
    engine = report.get("engine")
    lines = [f"parity of {report['artifacts_dir']} (recipe {report['recipe']}) against {report['reference']}"
             + ("" if engine else "  [engine not run: no model.litertlm]")]
    identity = report.get("reference_identity") or {}
    if identity.get("matches") is not True and identity.get("detail"):
        lines.append(f"  {'REFERENCE MISMATCH' if identity['matches'] is False else 'note'}: {identity['detail']}")
    for name in [n for n in ORDER if n in report["artifacts"]]:
        a = report["artifacts"][name]
        fmt = f"{a['weights']} weights, " if a.get("weights") else ""
        tol = f"{fmt}EXCEEDED: {'; '.join(a['exceeded'])}" if a["exceeded"] else f"{fmt}within tolerance"
        lines.append(f"  {name:<20} max abs {a['max_abs_error']:.3g}  rel {a['max_rel_error']:.3g}  "
                     f"cosine {a['cosine']:.6f}  ({tol})")
    g = report["generation"]
    if "top1_agreement" in g:
        lines.append(f"  decoder steps: top-1 {g['top1_agreement']:.1%}, top-5 {g['top5_agreement']:.1%}, "
                     f"KL mean {g['kl_mean']:.3g} max {g['kl_max']:.3g}")
    lines.append(f"  {'prompt':<22} {'HF = simulator':<18} {'HF = engine':<18} {'simulator = engine':<18}")
    for row in report["cases"]:
        cells = []
        for pair in ("hf/simulator", "hf/engine", "simulator/engine"):
            r = row["pairs"].get(pair)
            cells.append("not run" if r is None else "same" if r["equal"] else f"token {r['first_difference']}")
        lines.append(f"  {row['name']:<22} {cells[0]:<18} {cells[1]:<18} {cells[2]:<18}")
        causes = {r["cause"] for r in row["pairs"].values() if not r["equal"]}
        lines += [f"      cause: {c}" for c in sorted(causes)]
    lines.append(f"  result: {'PASS' if report['ok'] else 'FAIL'}"
                 + (f" (out of tolerance: {', '.join(report['failing'])})" if report["failing"] else ""))
    return lines


def _error_ratio(a: dict) -> float | None:
    """The measured error as a fraction of its tolerance (1 = at the bound); None when exact."""
    err = a.get("max_row_relative_error") if a.get("tolerance_applies_to") == "max_row_relative_error" \
        else a["max_abs_error"]
    tol = a.get("tolerance")
    if not err:
        return None
    if tol is None or not math.isfinite(tol) or tol <= 0:
        return 1e3  # no bound (or an exact one) and an error: far past it
    return err / tol


def pictures(report: dict[str, Any]) -> str:
    """The report's inline SVGs: error against tolerance per artifact, feature cosine per tower,
    per-token agreement per prompt, and the decoder's error per step."""
    from edge import svg

    arts = {n: report["artifacts"][n] for n in ORDER if n in report["artifacts"]}
    parts = [svg.bars({n: _error_ratio(a) for n, a in arts.items()},
                      "error / tolerance per artifact (bar past the line: out of tolerance)", 1.0, "tolerance")]
    towers = {n: 1 - a["cosine"] for n, a in arts.items() if n.startswith(("vision", "audio", "end_of"))}
    if towers:
        parts.append(svg.bars(towers, "1 - feature cosine per tower output (0 = identical direction)", None))
    for r in report["cases"]:
        pairs = {p.replace("/", " = "): (r["pairs"][p]["first_difference"] if p in r["pairs"] else "not run")
                 for p in ("hf/simulator", "hf/engine", "simulator/engine")}
        parts.append(svg.agreement_strip(pairs, r["tokens"], f"{r['name']}: greedy tokens (green: same; red: first "
                                                              f"difference; grey: after it)"))
    steps = report["steps"]
    if steps:
        parts.append(svg.line_plot({"decoder logits max abs error": [s["max_abs_error"] for s in steps],
                                    "KL(ref || artifacts)": [s["kl"] for s in steps]},
                                   "decoder error per decode step", "decode step (all text prompts)"))
    return "\n".join(parts)


def write_html(report: dict[str, Any], path: str | Path, quality: dict[str, Any] | None = None) -> Path:
    """The parity report as one self-contained page; with `quality` (edge/evaluate.py's report),
    its verdict section too."""
    from edge.fileio import atomic_write

    e = html.escape
    rows = "".join(f"<tr><td>{e(n)}</td><td>{a['max_abs_error']:.3g}</td><td>{a['max_rel_error']:.3g}</td>"
                   f"<td>{a['cosine']:.6f}</td><td>{a['tolerance']}</td><td>{'ok' if a['within_tolerance'] else 'FAIL'}"
                   f"</td></tr>" for n, a in report["artifacts"].items())
    cases = "".join(
        f"<h3>{e(r['name'])}: {e(r['prompt'])}</h3>" + (f"<p><i>{e(r['known'])}</i></p>" if r["known"] else "")
        + "<table class=side><tr><th>HF (PyTorch)</th><th>simulator</th><th>engine (LiteRT-LM)</th></tr>"
        f"<tr><td>{e(r['hf']['text'])}</td><td>{e(r['simulator']['text'])}</td>"
        f"<td>{e(r['engine']['text']) if r['engine'] else 'not run'}</td></tr></table>"
        for r in report["cases"])
    if quality is not None:
        from edge.evaluate import quality_html

        cases += quality_html(quality)
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>gemma3n-edge parity</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td,th{{padding:2px 10px;text-align:right}}
table.side td{{text-align:left;vertical-align:top;width:33%;font-family:monospace;white-space:pre-wrap}}</style>
</head><body><h1>Parity report</h1><pre>{e(chr(10).join(summary_lines(report)))}</pre>
<table><tr><th>artifact</th><th>max abs</th><th>max rel</th><th>cosine</th><th>tolerance</th><th></th></tr>{rows}</table>
{pictures(report)}<h2>Answers side by side</h2>{cases}</body></html>"""
    return atomic_write(Path(path), body)
