"""Class names -> token positions in a tokenized prompt, using the pipeline's own CLIP tokenizer.

Cross-attention maps are indexed by token position, so a class's map is the mean of the columns of the
BPE pieces that spell it. Positions come from the tokenizer itself (never from word counts): a class is
found as a token-id subsequence of the tokenized prompt that starts at a word boundary (CLIP's BPE marks
the last piece of every word with ``</w>``, so a piece starts a word when the one before it ends a word).
Every occurrence counts: "mold on a wall, more mold" averages both "mold" columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

WORD_END = "</w>"


@dataclass(frozen=True)
class TokenSpan:
    """Where one class name sits in a tokenized prompt (position 0 is the start token)."""

    name: str
    occurrences: tuple[tuple[int, ...], ...]

    @property
    def positions(self) -> tuple[int, ...]:
        """Every token position of every occurrence; the class map averages these columns."""
        return tuple(p for occurrence in self.occurrences for p in occurrence)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "positions": list(self.positions)}


def class_prompt(classes: Sequence[str], separator: str = ", ") -> str:
    """The class-only prompt of Dataset Diffusion's class-prompt mode, e.g. ``"mold, stain, pipe"``."""
    return separator.join(classes)


def with_class_names(caption: str, classes: Sequence[str], separator: str = ", ") -> str:
    """``caption; mold, stain`` - Dataset Diffusion's text prompt (caption + the class names)."""
    return f"{caption}; {class_prompt(classes, separator)}"


def _max_length(tokenizer) -> int:
    length = getattr(tokenizer, "model_max_length", 77)
    return length if isinstance(length, int) and 0 < length < 100_000 else 77


def prompt_token_ids(tokenizer, prompt: str, *, truncate: bool = True) -> list[int]:
    """Token ids exactly as the SD pipelines encode a prompt (start token, pieces, end token; no padding)."""
    kwargs: dict[str, Any] = {"truncation": True, "max_length": _max_length(tokenizer)} if truncate else {}
    return list(tokenizer(prompt, **kwargs).input_ids)


def _class_pieces(tokenizer, name: str) -> list[int]:
    ids = list(tokenizer(name, add_special_tokens=False).input_ids)
    if not ids:
        raise ValueError(f"class name {name!r} tokenizes to nothing; use a non-empty name.")
    return ids


def _occurrences(ids: list[int], tokens: list[str], pieces: list[int]) -> list[tuple[int, ...]]:
    found = []
    n = len(pieces)
    for start in range(1, len(ids) - n + 1):
        if ids[start : start + n] != pieces:
            continue
        # Word boundary: the match must begin a word (previous token is the start token or ends a word)
        # and end one (its last piece ends a word), so "pipe" does not match inside "bagpipe".
        begins_word = start == 1 or tokens[start - 1].endswith(WORD_END)
        ends_word = tokens[start + n - 1].endswith(WORD_END)
        if begins_word and ends_word:
            found.append(tuple(range(start, start + n)))
    return found


def _spans_one_tokenizer(tokenizer, prompt: str, classes: Sequence[str]) -> list[TokenSpan]:
    ids = prompt_token_ids(tokenizer, prompt)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    spans = []
    for name in classes:
        pieces = _class_pieces(tokenizer, name)
        occurrences = _occurrences(ids, tokens, pieces)
        if not occurrences:
            full_ids = prompt_token_ids(tokenizer, prompt, truncate=False)
            full_tokens = tokenizer.convert_ids_to_tokens(full_ids)
            if _occurrences(full_ids, full_tokens, pieces):
                raise ValueError(
                    f"class {name!r} occurs in prompt {prompt!r} only after the tokenizer's "
                    f"{_max_length(tokenizer)}-token limit; shorten the prompt or name the class earlier."
                )
            raise ValueError(
                f"class {name!r} does not occur in prompt {prompt!r} (as whole words, per the CLIP tokenizer); "
                "add it to the prompt, or use class-prompt mode (MaskerConfig(class_prompt=True))."
            )
        spans.append(TokenSpan(name, tuple(occurrences)))
    return spans


def class_token_spans(tokenizers: Any, prompt: str, classes: Sequence[str]) -> list[TokenSpan]:
    """Token spans of ``classes`` in ``prompt``, one per class, in class order.

    ``tokenizers`` is one tokenizer or a sequence of them (SDXL has two). With several, the spans must
    agree - SDXL's cross-attention keys concatenate both encoders position by position, so a class must
    sit at the same positions for both; a disagreement is an error rather than a silent misalignment.
    Raises ``ValueError`` naming the class and the prompt when a class is missing.
    """
    if not classes:
        raise ValueError(f"classes is empty for prompt {prompt!r}; give at least one class name.")
    duplicates = sorted({c for c in classes if list(classes).count(c) > 1})
    if duplicates:
        raise ValueError(
            f"classes {duplicates} are listed twice for prompt {prompt!r}; list each class once."
        )
    if not isinstance(tokenizers, list | tuple):
        tokenizers = [tokenizers]
    tokenizers = [t for t in tokenizers if t is not None]
    if not tokenizers:
        raise ValueError("class_token_spans needs at least one tokenizer.")
    reference = _spans_one_tokenizer(tokenizers[0], prompt, classes)
    for other in tokenizers[1:]:
        spans = _spans_one_tokenizer(other, prompt, classes)
        if spans != reference:
            raise ValueError(
                f"the pipeline's tokenizers disagree on class positions in prompt {prompt!r}: "
                f"{[s.to_dict() for s in reference]} vs {[s.to_dict() for s in spans]}."
            )
    return reference


def pipeline_tokenizers(pipe: Any) -> list[Any]:
    """The tokenizers whose positions index a pipeline's cross-attention keys (SDXL: both)."""
    found = [getattr(pipe, name, None) for name in ("tokenizer", "tokenizer_2")]
    found = [t for t in found if t is not None]
    if not found:
        raise ValueError(f"{type(pipe).__name__} has no tokenizer; class-token positions cannot be found.")
    return found
