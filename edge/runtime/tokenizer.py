"""SentencePiece tokenizer with Gemma's special tokens and streaming detokenization.

Mirrors LiteRT-LM's SentencePiece tokenizer component: text -> ids with the chat
template's turn markers mapped to the manifest's ids, and ids -> text incrementally as
tokens arrive. Detokenization follows SentencePiece's own `Decode` rules
(sentencepiece_processor.cc) so that the streamed text equals `sp.decode(ids)`:

- `▁` (U+2581) is a space; the first whitespace piece loses its `▁` only when the model
  normalizes with add_dummy_prefix or remove_extra_whitespaces (Gemma does neither);
- byte-fallback pieces `<0xNN>` are raw bytes, joined across tokens into UTF-8 — a
  character split over several tokens is emitted once complete; invalid bytes become one
  U+FFFD each (SentencePiece's rule, not Python's "maximal subpart" rule);
- control pieces (<bos>, <eos>, <pad>) are invisible; ids at or beyond the SentencePiece
  vocabulary (Gemma's eoi, image/audio soft tokens, eoa) are specials with no text.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from edge.errors import UserError
from edge.format.manifest import SpecialTokens

SPACE = "\u2581"
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_DEFAULT_UNK_SURFACE = " \u2047 "  # SentencePiece's kDefaultUnknownSymbol

# Literal marker text of Gemma's special tokens (as in its tokenizer and chat template),
# keyed by SpecialTokens field: these strings in text become the manifest's ids.
SPECIAL_STRINGS = {
    "start_of_turn": "<start_of_turn>",
    "end_of_turn": "<end_of_turn>",
    "boi": "<start_of_image>",
    "eoi": "<end_of_image>",
    "image_soft": "<image_soft_token>",
    "boa": "<start_of_audio>",
    "eoa": "<end_of_audio>",
    "audio_soft": "<audio_soft_token>",
}


class Tokenizer:
    """Encode text and decode ids with a SentencePiece model and the manifest's special ids."""

    def __init__(self, model_path: str | os.PathLike, tokens: SpecialTokens):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2

        path = Path(model_path)
        if not path.is_file():
            raise UserError(f"{path}: tokenizer model not found (the artifact directory needs tokenizer.model)")
        data = path.read_bytes()
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(data)
        except (RuntimeError, OSError) as e:
            raise UserError(f"{path}: not a SentencePiece model ({e})") from None
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(data)
        norm = proto.normalizer_spec
        # SentencePiece strips the leading ▁ of the first piece only under these options.
        self._strip_bos_ws = norm.add_dummy_prefix or norm.remove_extra_whitespaces
        self._strip_all_leading = norm.remove_extra_whitespaces
        trainer = proto.trainer_spec
        self._unk_surface = trainer.unk_surface if trainer.HasField("unk_surface") else _DEFAULT_UNK_SURFACE
        self.tokens = tokens
        self.sp_vocab_size = self._sp.GetPieceSize()
        specials = {s: getattr(tokens, k) for k, s in SPECIAL_STRINGS.items() if getattr(tokens, k) is not None}
        self._special_ids = specials
        self._special_re = (
            re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")
            if specials
            else None
        )

    # -------------------------------------------------------------- encode

    def encode(self, text: str, literal: tuple[int, int] | None = None) -> list[int]:
        """Text -> ids (no bos). Special marker strings map to the manifest's ids, except inside the
        `literal` span [start, end) (the user's own text), where they are plain characters: a user who
        types `<start_of_turn>model` does not get to end the turn (edge/commands/simulate.py --raw-prompt)."""
        if self._special_re is None:
            return list(self._sp.EncodeAsIds(text))
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            if literal is not None and literal[0] <= m.start() < literal[1]:
                continue  # stays text
            ids += self._plain(text[pos:m.start()])
            ids.append(self._special_ids[m.group()])
            pos = m.end()
        return ids + self._plain(text[pos:])

    def _plain(self, text: str) -> list[int]:
        """`text` with no marker matched: each marker string is cut after its first character, so
        neither half is a piece SentencePiece (whose user-defined symbols would match) turns into it."""
        if not text:
            return []
        if self._special_re is None or not self._special_re.search(text):
            return list(self._sp.EncodeAsIds(text))
        ids, pos = [], 0
        for m in self._special_re.finditer(text):
            ids += self._sp.EncodeAsIds(text[pos:m.start() + 1])
            pos = m.start() + 1
        return ids + list(self._sp.EncodeAsIds(text[pos:]))

    # -------------------------------------------------------------- decode

    def is_special(self, token_id: int) -> bool:
        """True for ids with no text: control pieces and ids beyond the SentencePiece vocab."""
        return token_id < 0 or token_id >= self.sp_vocab_size or self._sp.IsControl(token_id)

    def piece(self, token_id: int) -> str:
        """The raw piece string (or a <name> for specials outside the SentencePiece vocab)."""
        if 0 <= token_id < self.sp_vocab_size:
            return self._sp.IdToPiece(token_id)
        for name, value in self.tokens.items().items():
            if value == token_id:
                return SPECIAL_STRINGS.get(name, f"<{name}>")
        return f"<id {token_id}>"

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> text, the same way the streaming detokenizer emits it."""
        stream = self.stream()
        return "".join(stream.push(i) for i in ids) + stream.flush()

    def stream(self) -> "StreamDetokenizer":
        return StreamDetokenizer(self)


def _is_trail(b: int) -> bool:
    return b & 0xC0 == 0x80


def _utf8_length(lead: int) -> int:
    """Bytes a sequence starting with `lead` needs (SentencePiece's DecodeUTF8); 0 = invalid lead."""
    if lead < 0x80:
        return 1
    if lead & 0xE0 == 0xC0:
        return 2
    if lead & 0xF0 == 0xE0:
        return 3
    if lead & 0xF8 == 0xF0:
        return 4
    return 0


def _decode_one(buf: bytes) -> str | None:
    """The character buf encodes, if valid by SentencePiece's rules (no overlongs, no surrogates)."""
    n = len(buf)
    if n == 1:
        return chr(buf[0])
    if not all(_is_trail(b) for b in buf[1:]):
        return None
    cp = buf[0] & (0x7F >> n)
    for b in buf[1:]:
        cp = (cp << 6) | (b & 0x3F)
    if cp < (0x80, 0x800, 0x10000)[n - 2] or 0xD800 <= cp < 0xE000 or cp > 0x10FFFF:
        return None
    return chr(cp)


class StreamDetokenizer:
    """Incremental ids -> text: `push(id)` returns the text that became final with that id."""

    def __init__(self, tok: Tokenizer):
        self._tok = tok
        self._sp = tok._sp
        self._pending = bytearray()  # byte-fallback bytes not yet forming a whole character
        self._is_bos_ws = True  # still at the start: the first ▁ may be consumed
        self._bos_ws_seen = False
        self._emitted = False

    def _drain(self, final: bool) -> str:
        """Decode what can be decoded from the pending bytes; with final, all of them."""
        out, buf = [], self._pending
        while buf:
            need = _utf8_length(buf[0])
            if need and len(buf) < need and not final and all(_is_trail(b) for b in buf[1:]):
                break  # a prefix that may still complete
            ch = _decode_one(bytes(buf[:need])) if need and len(buf) >= need else None
            if ch is None:
                out.append("\ufffd")  # one replacement per invalid byte
                del buf[:1]
            else:
                out.append(ch)
                del buf[:need]
        text = "".join(out)
        self._emitted |= bool(text)
        return text

    def push(self, token_id: int) -> str:
        tok, sp = self._tok, self._sp
        if token_id < 0 or token_id >= tok.sp_vocab_size:
            return ""  # special beyond the SentencePiece vocab: no text
        if sp.IsByte(token_id):
            m = _BYTE_PIECE.match(sp.IdToPiece(token_id))
            self._pending.append(int(m.group(1), 16))
            return self._drain(final=False)
        out = self._drain(final=True)  # a non-byte piece ends the byte run
        if self._bos_ws_seen or self._emitted:
            self._is_bos_ws = False
        self._bos_ws_seen = False
        if sp.IsControl(token_id):
            return out
        if sp.IsUnknown(token_id):
            text = tok._unk_surface
        else:
            piece = sp.IdToPiece(token_id)
            if self._is_bos_ws and tok._strip_bos_ws and piece.startswith(SPACE):
                piece = piece[len(SPACE):]
                self._bos_ws_seen = not tok._strip_all_leading
            text = piece.replace(SPACE, " ")
        self._emitted |= bool(text)
        return out + text

    def flush(self) -> str:
        """Text still held back (an incomplete UTF-8 sequence at the end: U+FFFD per byte)."""
        return self._drain(final=True)
