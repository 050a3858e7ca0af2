"""CLIP BPE tokenizer for SEEM's text encoder, usable offline.

SEEM tokenizes with Hugging Face's ``openai/clip-vit-base-patch32`` tokenizer. The same BPE vocabulary ships inside
the ``open-clip-torch`` wheel (``open_clip/bpe_simple_vocab_16e6.txt.gz``), so the default tokenizer is rebuilt from
that file as a transformers ``CLIPTokenizer``: identical ids (SOT 49406, EOT 49407, 49408 entries), identical
padding (with the EOT id) and truncation (EOT kept last), with no download. A real tokenizer folder or Hub id can be
given to :meth:`SEEMTokenizer.from_pretrained` instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from segcontract.clip_bpe import load_clip_bpe

Padding = Literal["max_length", "longest"]


@dataclass(frozen=True)
class TokenizedText:
    """A tokenized batch: ``input_ids`` and ``attention_mask`` (1 for SOT..first EOT inclusive), both ``[n, L]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __getitem__(
        self, key: str
    ) -> torch.Tensor:  # dict-style access, as with a transformers BatchEncoding
        return getattr(self, key)

    @property
    def lengths(self) -> torch.Tensor:
        """Number of valid tokens (SOT..EOT) per row, ``[n]``."""
        return self.attention_mask.sum(dim=-1)

    def to(self, device: torch.device | str) -> TokenizedText:
        return TokenizedText(self.input_ids.to(device), self.attention_mask.to(device))


class SEEMTokenizer:
    """Callable CLIP tokenizer: ``tokenizer(texts) -> TokenizedText``.

    Wraps any transformers tokenizer whose ids follow CLIP (EOT is the largest id, pads with EOT); the SEEM text
    encoder pools at ``argmax(input_ids)``, i.e. at the first EOT.
    """

    def __init__(self, backend: Any, context_length: int = 77) -> None:
        if context_length < 2:
            raise ValueError(f"SEEMTokenizer.context_length must be >= 2 (SOT + EOT), got {context_length}.")
        if backend.bos_token_id is None or backend.eos_token_id is None:
            raise ValueError(
                "SEEMTokenizer needs a backend with bos (SOT) and eos (EOT) tokens, like CLIPTokenizer."
            )
        self.backend = backend
        self.context_length = context_length

    @classmethod
    def from_bpe_file(cls, path: str | os.PathLike | None = None, context_length: int = 77) -> SEEMTokenizer:
        """The offline tokenizer built from a CLIP BPE file (default: the one inside open-clip-torch)."""
        # transformers takes seconds to import and only building a tokenizer needs it
        from transformers import CLIPTokenizer

        vocab, merges = load_clip_bpe(None if path is None else str(path))
        backend = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=context_length)
        return cls(backend, context_length=context_length)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike | None = None, context_length: int = 77, **kwargs: Any
    ) -> SEEMTokenizer:
        """A Hugging Face tokenizer folder or Hub id (e.g. ``"openai/clip-vit-base-patch32"``), or, with
        ``None``, the offline BPE tokenizer. ``kwargs`` go to ``AutoTokenizer.from_pretrained``."""
        if name_or_path is None:
            return cls.from_bpe_file(context_length=context_length)
        # transformers takes seconds to import and only building a tokenizer needs it
        from transformers import AutoTokenizer

        backend = AutoTokenizer.from_pretrained(name_or_path, model_max_length=context_length, **kwargs)
        return cls(backend, context_length=context_length)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a Hugging Face tokenizer folder that :meth:`from_pretrained` (or ``CLIPTokenizer``) reads back."""
        self.backend.save_pretrained(str(path))

    @property
    def sot_token_id(self) -> int:
        return int(self.backend.bos_token_id)

    @property
    def eot_token_id(self) -> int:
        return int(self.backend.eos_token_id)

    @property
    def vocab_size(self) -> int:
        return len(self.backend)

    def __call__(
        self, texts: str | Sequence[str], padding: Padding = "max_length", context_length: int | None = None
    ) -> TokenizedText:
        """Tokenize ``texts``; ``padding="longest"`` pads only to the batch's longest text (never longer than
        ``context_length``), which is all a causal encoder that pools at the first EOT needs."""
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}.")
        max_length = self.context_length if context_length is None else context_length
        batch = [texts] if isinstance(texts, str) else list(texts)
        if not batch:
            raise ValueError("SEEMTokenizer needs at least one text.")
        encoded = self.backend(
            batch, padding=padding, truncation=True, max_length=max_length, return_tensors="pt"
        )
        input_ids = encoded["input_ids"].long()
        # Rebuilt rather than trusted from the backend: 1 up to and including the first EOT, as pooling assumes.
        first_eot = (input_ids == self.eot_token_id).int().argmax(dim=-1, keepdim=True)
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        attention_mask = (positions <= first_eot).long()
        return TokenizedText(input_ids, attention_mask)

    def __repr__(self) -> str:
        return (
            f"SEEMTokenizer(backend={type(self.backend).__name__}, vocab_size={self.vocab_size}, "
            f"context_length={self.context_length})"
        )
