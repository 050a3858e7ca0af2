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
        tokens: ``[T, B, D]`` seq-first valid token embeddings (SOT..EOT) of each image's *unique* texts,
            concatenated, zero-padded to the longest image; ``None`` when no image has a text.
        padding_mask: ``[B, T]``, True = padding.
        class_embeddings: per image the EOT embedding ``[n, D]`` of every text (duplicates included), or ``None``.
        hashes: per image :func:`text_hash` of every text.
    """

    tokens: Tensor | None
    padding_mask: Tensor | None
    class_embeddings: list[Tensor | None]
    hashes: list[list[int]]


def encode_grounding(lang: LanguageEncoder, texts: Sequence[Sequence[str] | None]) -> GroundingPrompts:
    """Encode each image's grounding texts (one per grounding mask, duplicates allowed; ``None``/empty = none).

    Texts are deduplicated by :func:`text_hash` per image; the valid tokens (SOT..EOT) of the unique texts are
    concatenated in first-occurrence order; the sequences are padded seq-first with zeros and a padding mask
    (the official code pads with -1 and finds the padding again by value). Runs with autograd when the encoder
    needs it (see :class:`LanguageEncoder`).
    """
    per_image = [list(t) if t else [] for t in texts]
    unique = list(dict.fromkeys(text for image_texts in per_image for text in image_texts))
    hashes = [[text_hash(text) for text in image_texts] for image_texts in per_image]
    if not unique:
        return GroundingPrompts(None, None, [None] * len(per_image), hashes)
    tokenized = lang.tokenize(unique)
    encoding = lang(tokenized.input_ids, tokenized.attention_mask, normalize=False)
    row = {text: index for index, text in enumerate(unique)}
    lengths = encoding.attention_mask.sum(dim=1).tolist()
    sequences, class_embs = [], []
    for image_texts in per_image:
        if not image_texts:
            sequences.append(encoding.tokens.new_zeros(0, encoding.tokens.shape[-1]))
            class_embs.append(None)
            continue
        indices = [row[text] for text in dict.fromkeys(image_texts)]
        sequences.append(torch.cat([encoding.tokens[i, : int(lengths[i])] for i in indices]))
        class_embs.append(encoding.sentence[[row[text] for text in image_texts]])
    longest = max(len(s) for s in sequences)
    tokens = encoding.tokens.new_zeros(longest, len(sequences), encoding.tokens.shape[-1])
    padding = torch.ones(len(sequences), longest, dtype=torch.bool, device=tokens.device)
    for b, sequence in enumerate(sequences):
        tokens[: len(sequence), b] = sequence
        padding[b, : len(sequence)] = False
    return GroundingPrompts(tokens, padding, class_embs, hashes)
