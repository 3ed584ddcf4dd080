"""Special token ids and the chat template a runtime needs, read from the checkpoint.

pad/eos/bos come from the text config; `<start_of_turn>`/`<end_of_turn>` from the
SentencePiece model itself (so a tokenizer with other ids still works); image/audio ids
from the top-level Gemma3nConfig fields.
"""

from __future__ import annotations

from pathlib import Path

from edge.errors import UserError

# Gemma's single-turn chat format; the runtime prepends <bos>.
GEMMA_CHAT_TEMPLATE = "<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n"


def chat_template() -> str:
    return GEMMA_CHAT_TEMPLATE


def special_tokens(cfg, ckpt: str | Path) -> dict[str, int]:
    import sentencepiece as spm

    path = Path(ckpt) / "tokenizer.model"
    if not path.is_file():
        raise UserError(f"{path}: missing; a Gemma 3n checkpoint ships its SentencePiece tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    turn = {}
    for key, piece in (("start_of_turn", "<start_of_turn>"), ("end_of_turn", "<end_of_turn>")):
        i = sp.piece_to_id(piece)
        if i == sp.unk_id() or sp.id_to_piece(i) != piece:
            raise UserError(f"{path}: has no {piece} piece; it is not a Gemma chat tokenizer")
        turn[key] = i
    text = cfg.text
    eos = text.eos_token_id[0] if isinstance(text.eos_token_id, (list, tuple)) else text.eos_token_id
    if cfg.causal_lm:  # text-only: no image or audio ids
        return {"pad": text.pad_token_id, "eos": eos, "bos": text.bos_token_id, **turn}
    return {"pad": text.pad_token_id, "eos": eos, "bos": text.bos_token_id, **turn,
            "boi": cfg.boi_token_id, "eoi": cfg.eoi_token_id, "image_soft": cfg.image_token_id,
            "boa": cfg.boa_token_id, "eoa": cfg.eoa_token_id, "audio_soft": cfg.audio_token_id}
