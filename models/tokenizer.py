"""BERT WordPiece tokenizer (uncased), matching HF BertTokenizer for all-MiniLM-L6-v2.

Pipeline (same order as the reference implementation):
1. clean: drop NUL, U+FFFD and control characters; whitespace characters -> ' '.
2. CJK ideographs get spaces around them (each one becomes its own word).
3. lowercase, then strip accents (NFD, drop Mn marks).
4. split on whitespace, then split off every punctuation character (ASCII
   33-47, 58-64, 91-96, 123-126, plus Unicode category P*).
5. WordPiece: greedy longest-match-first, continuation pieces prefixed '##';
   a word with no full cover, or longer than 100 chars, becomes [UNK].
Encoding: [CLS] tokens [SEP], truncated to seq_len (keeping [SEP]), padded with [PAD]=0
on the right; attention_mask 1 on real tokens; token_type_ids all 0 (single segment).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from shardtwin.errors import InputError, ModelAssetError

MAX_WORD_CHARS = 100


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Steps 1-4: clean, isolate CJK, lowercase + strip accents, split whitespace/punctuation."""
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if _is_cjk(cp):
            chars.append(f" {ch} ")
        else:
            chars.append(" " if _is_whitespace(ch) else ch)
    words = []
    for word in "".join(chars).split():
        if lowercase:
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(c for c in word if unicodedata.category(c) != "Mn")
        words.extend(_split_punctuation(word))
    return words


def _split_punctuation(word: str) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    for ch in word:
        if _is_punctuation(ch):
            if current:
                out.append("".join(current))
                current = []
            out.append(ch)
        else:
            current.append(ch)
    if current:
        out.append("".join(current))
    return out


@dataclass(frozen=True)
class Encoding:
    """Batch encoding: int64 arrays of shape [B, seq_len]."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray

    def feeds(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "token_type_ids": self.token_type_ids,
                "attention_mask": self.attention_mask}


class WordPieceTokenizer:
    """Vocabulary-driven WordPiece tokenizer; build with from_vocab_file or from a token list."""

    def __init__(self, vocab: Sequence[str], lowercase: bool = True) -> None:
        self.vocab = {tok: i for i, tok in enumerate(vocab)}
        self.lowercase = lowercase
        for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
            if special not in self.vocab:
                raise ModelAssetError(f"vocabulary lacks the special token {special}")
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]
        self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]

    @classmethod
    def from_vocab_file(cls, path: str | Path, lowercase: bool = True) -> "WordPieceTokenizer":
        try:
            lines = Path(path).read_text(encoding="utf-8").split("\n")
        except OSError as exc:
            raise ModelAssetError(f"cannot read vocabulary {path}: {exc.strerror or exc}") from exc
        if lines and lines[-1] == "":
            lines.pop()
        return cls([ln.rstrip("\r") for ln in lines], lowercase)

    def wordpiece(self, word: str) -> list[str]:
        """Greedy longest-match-first split of one basic token."""
        if len(word) > MAX_WORD_CHARS:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return ["[UNK]"]  # no cover: the whole word is unknown
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [p for w in basic_tokenize(text, self.lowercase) for p in self.wordpiece(w)]

    def ids(self, text: str) -> list[int]:
        """[CLS] + token ids + [SEP], no truncation or padding."""
        return [self.cls_id, *(self.vocab.get(t, self.unk_id) for t in self.tokenize(text)), self.sep_id]

    def encode(self, texts: Sequence[str] | str, seq_len: int) -> Encoding:
        """Encode a batch to fixed [B, seq_len] arrays (truncate keeping [SEP]; pad right)."""
        if isinstance(texts, str):
            texts = [texts]
        if seq_len < 2:
            raise InputError(f"seq_len must be >= 2 (room for [CLS] and [SEP]); got {seq_len}")
        ids = np.full((len(texts), seq_len), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), seq_len), dtype=np.int64)
        for row, text in enumerate(texts):
            seq = self.ids(text)
            if len(seq) > seq_len:
                seq = seq[:seq_len - 1] + [self.sep_id]
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        return Encoding(ids, mask, np.zeros_like(ids))


def load_tokenizer(model_name: str = "all-MiniLM-L6-v2") -> WordPieceTokenizer:
    """The real tokenizer of all-MiniLM-L6-v2 (fetched and cached on first use).

    Other BERT-family models use the same uncased BERT vocabulary here (the tokenizer
    only shapes input ids; their weights are synthetic anyway).
    """
    from models.fetch_weights import ensure_minilm

    return WordPieceTokenizer.from_vocab_file(ensure_minilm() / "vocab.txt", lowercase=True)
