"""The CLIP BPE vocabulary both SDKs build their offline tokenizers from."""

from __future__ import annotations

import gzip

import pytest

from segcontract import CLIP_VOCAB_SIZE, bytes_to_unicode, load_clip_bpe


def test_bytes_to_unicode_is_a_bijection_keeping_printables() -> None:
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] != " "  # whitespace is remapped, letters are not


def test_vocabulary_order_matches_clip() -> None:
    vocab, merges = load_clip_bpe()
    assert len(vocab) == CLIP_VOCAB_SIZE
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (49406, 49407)
    assert vocab["a</w>"] == 256 + list(bytes_to_unicode().values()).index("a")
    assert vocab["".join(merges[0])] == 512


def test_a_file_that_is_not_a_bpe_file_is_rejected(tmp_path) -> None:
    bad = tmp_path / "bad.txt.gz"
    with gzip.open(bad, "wt", encoding="utf-8") as handle:
        handle.write("header\na b\n")
    with pytest.raises(ValueError, match="not a CLIP BPE file"):
        load_clip_bpe(str(bad))
