"""Grounding texts of a training batch, encoded for the decoder and the criterion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from seemadapt.hashing import stable_hash
from seemadapt.model.language import LanguageEncoder

__all__ = ["GroundingPrompts", "encode_grounding", "text_hash"]


def text_hash(text: str) -> int:
    """The 56-bit :func:`~seemadapt.hashing.stable_hash` that marks identical grounding texts."""
    return stable_hash(text, num_bytes=7)


@dataclass
class GroundingPrompts:
    """Grounding texts of a batch, encoded for the decoder and the criterion.

    Attributes:
        tokens: ``[T, B, D]`` seq-first valid token embeddings (SOT..EOT) of each image's first text per hash,
            concatenated, zero-padded to the longest image; ``None`` when no image has a text.
        padding_mask: ``[B, T]``, True = padding.
        class_embeddings: per image the EOT embedding ``[n, D]`` of every text (duplicates included), or ``None``.
        hashes: per image the hash of every text (given, or :func:`text_hash`): equal hashes, one target.
    """

    tokens: Tensor | None
    padding_mask: Tensor | None
    class_embeddings: list[Tensor | None]
    hashes: list[list[int]]


def _hashes_of(per_image: list[list[str]], hashes: Sequence[Sequence[int] | None] | None) -> list[list[int]]:
    """One hash per text of every image: the given ones, or :func:`text_hash` of each text."""
    if hashes is None:
        return [[text_hash(text) for text in image_texts] for image_texts in per_image]
    result = [[int(h) for h in image_hashes] if image_hashes is not None else [] for image_hashes in hashes]
    if [len(h) for h in result] != [len(t) for t in per_image]:
        raise ValueError("encode_grounding: hashes must give one value per text of every image.")
    return result


def _first_per_hash(image_texts: list[str], image_hashes: list[int]) -> list[str]:
    """The first text of each hash, in first-occurrence order (what SEEM feeds the decoder)."""
    first: dict[int, str] = {}
    for text, value in zip(image_texts, image_hashes):
        first.setdefault(value, text)
    return list(first.values())


def encode_grounding(
    lang: LanguageEncoder,
    texts: Sequence[Sequence[str] | None],
    hashes: Sequence[Sequence[int] | None] | None = None,
) -> GroundingPrompts:
    """Encode each image's grounding texts (one per grounding mask, duplicates allowed; ``None``/empty = none).

    ``hashes`` (per image, one per text; default :func:`text_hash` of each text) say which texts stand for the
    same target: the mapper gives a sentence's hash in text mode and the *class name's* in class mode, so two
    templates of one class ("a photo of a cat.", "a cat.") share one. As in SEEM, only the first text of each
    hash reaches the decoder: its valid tokens (SOT..EOT) are concatenated in first-occurrence order and padded
    seq-first with zeros and a padding mask (the official code pads with -1 and finds the padding again by
    value). Every text keeps its own EOT embedding (``class_embeddings``) for the criterion, which groups targets
    by hash. Runs with autograd when the encoder needs it (see :class:`LanguageEncoder`).
    """
    per_image = [list(t) if t else [] for t in texts]
    hashes = _hashes_of(per_image, hashes)
    unique = list(dict.fromkeys(text for image_texts in per_image for text in image_texts))
    if not unique:
        return GroundingPrompts(None, None, [None] * len(per_image), hashes)
    tokenized = lang.tokenize(unique)
    encoding = lang(tokenized.input_ids, tokenized.attention_mask, normalize=False)
    row = {text: index for index, text in enumerate(unique)}
    lengths = encoding.attention_mask.sum(dim=1).tolist()
    sequences, class_embs = [], []
    for image_texts, image_hashes in zip(per_image, hashes):
        if not image_texts:
            sequences.append(encoding.tokens.new_zeros(0, encoding.tokens.shape[-1]))
            class_embs.append(None)
            continue
        indices = [row[text] for text in _first_per_hash(image_texts, image_hashes)]
        sequences.append(torch.cat([encoding.tokens[i, : int(lengths[i])] for i in indices]))
        class_embs.append(encoding.sentence[[row[text] for text in image_texts]])
    longest = max(len(s) for s in sequences)
    tokens = encoding.tokens.new_zeros(longest, len(sequences), encoding.tokens.shape[-1])
    padding = torch.ones(len(sequences), longest, dtype=torch.bool, device=tokens.device)
    for b, sequence in enumerate(sequences):
        tokens[: len(sequence), b] = sequence
        padding[b, : len(sequence)] = False
    return GroundingPrompts(tokens, padding, class_embs, hashes)
