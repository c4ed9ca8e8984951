"""WordPiece tokenizer against known all-MiniLM-L6-v2 (bert-base-uncased vocab) id sequences."""

import numpy as np
import pytest

from models.tokenizer import WordPieceTokenizer, basic_tokenize, load_tokenizer
from shardtwin.errors import InputError, ModelAssetError


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.mark.parametrize("text, ids", [
    ("A man is eating food.", [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]),
    ("The quick brown fox jumps over the lazy dog.",
     [101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1012, 102]),
    ("Hello, world!", [101, 7592, 1010, 2088, 999, 102]),
    ("unaffable", [101, 14477, 20961, 3468, 102]),
    ("", [101, 102]),
])
def test_known_ids(tok, text, ids):
    assert tok.ids(text) == ids


def test_basic_tokenization_rules():
    assert basic_tokenize("Héllo  NAÏVE\tcafé!") == ["hello", "naive", "cafe", "!"]
    assert basic_tokenize("中文abc") == ["中", "文", "abc"]
    assert basic_tokenize("a\x00b\u200bc") == ["abc"]  # NUL and format chars dropped


def test_wordpiece_unknown_and_continuation(tok):
    assert tok.tokenize("tokenization") == ["token", "##ization"]
    assert tok.tokenize("\u2603\u2603") == ["[UNK]"]
    assert tok.wordpiece("a" * 101) == ["[UNK]"]


def test_encode_pads_truncates_and_masks(tok):
    enc = tok.encode(["A man is eating food.", "word " * 40], seq_len=10)
    assert enc.input_ids.shape == enc.attention_mask.shape == enc.token_type_ids.shape == (2, 10)
    assert enc.input_ids.dtype == np.int64
    assert enc.input_ids[0].tolist() == [101, 1037, 2158, 2003, 5983, 2833, 1012, 102, 0, 0]
    assert enc.attention_mask[0].tolist() == [1] * 8 + [0, 0]
    assert enc.input_ids[1, 0] == 101 and enc.input_ids[1, -1] == 102 and enc.attention_mask[1].all()
    assert not enc.token_type_ids.any()
    with pytest.raises(InputError):
        tok.encode("x", seq_len=1)


def test_vocab_without_specials_is_rejected():
    with pytest.raises(ModelAssetError, match=r"\[PAD\]"):
        WordPieceTokenizer(["a", "b"])
