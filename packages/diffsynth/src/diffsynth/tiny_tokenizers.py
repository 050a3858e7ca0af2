"""Offline tokenizers for the tiny test pipelines: the real CLIP BPE, and a small T5 (SentencePiece-Unigram).

CLIP: the real vocabulary ships inside the ``open-clip-torch`` wheel (read through segcontract), so prompts
tokenize exactly as with ``openai/clip-vit-large-patch14``.

T5: no installed package ships a T5 SentencePiece model, and the ``sentencepiece`` package is not installed, so
the kit builds a *small* Unigram vocabulary in memory (``T5TokenizerFast`` of transformers 5 accepts a list of
``(piece, score)``). It keeps T5's conventions - ids 0/1/2 are ``<pad>``/``</s>``/``<unk>``, no start token,
``</s>`` closes every prompt, pieces that begin a word carry the ``"▁"`` marker - so class-token spans are found
with the same rules as for the real ``google/t5-v1_1-xxl`` tokenizer; the words differ (unknown words fall back
to single characters).
"""

from __future__ import annotations

import string

from transformers import CLIPTokenizer, T5TokenizerFast

from segcontract import load_clip_bpe

WORD_START = "\u2581"  # SentencePiece's word-boundary marker

# Words of the prompts the tests and demos use; anything else is spelled with single-character pieces.
T5_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "picture", "close", "up", "wall", "floor",
    "room", "house", "mold", "light", "dark", "stain", "water", "pipe", "rust", "crack", "dog", "cat", "car",
    "tree", "sky", "road", "person", "bathroom", "kitchen", "ceiling", "old", "white", "black", "green",
    "red", "blue", "corner", "window", "door", "more", "bagpipe", "damp", "tile", "tiles", "paint",
)  # fmt: skip


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A transformers ``CLIPTokenizer`` with the real CLIP vocabulary, built offline.

    ``pad_token="!"`` mirrors SDXL's / SD3's second tokenizer (OpenCLIP bigG), which pads with "!" (id 0).
    """
    vocab, merges = load_clip_bpe()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77, pad_token=pad_token)


def t5_vocabulary(words: tuple[str, ...] = T5_WORDS) -> list[tuple[str, float]]:
    """``(piece, log-probability)`` pairs: T5's three special tokens, whole words, then single characters.

    Word pieces score higher than any spelling in characters, so a known word is always one piece.
    """
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = [(WORD_START + w, -2.0) for w in words]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    pieces += [(WORD_START, -3.0)] + [(c, -8.0) for c in chars]
    return specials + pieces


def t5_tokenizer(model_max_length: int = 512) -> T5TokenizerFast:
    """A small T5 tokenizer (Unigram, T5's special-token layout), built offline."""
    return T5TokenizerFast(vocab=t5_vocabulary(), extra_ids=0, model_max_length=model_max_length)
