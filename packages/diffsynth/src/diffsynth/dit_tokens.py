"""Class-token spans in the text sequence that enters a diffusion transformer's joint attention.

SD3 / SD3.5: 77 CLIP positions (CLIP-L and CLIP-G side by side in the channels, so both tokenizers must agree)
followed by ``max_sequence_length`` T5 positions; a class's columns are its CLIP pieces *and* its T5 pieces
(position ``77 + j``). FLUX.1: only T5 positions enter the joint stream (CLIP is pooled into the modulation).

T5 is a SentencePiece tokenizer: a piece that starts a word carries ``"▁"``, there is no start token and
``</s>`` ends the prompt. A class matches where its pieces start a word and the next piece does not continue it
(so "mold" does not match inside "moldy"). A prompt longer than an encoder's limit is an error, since the
truncated part would silently never reach the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diffsynth.prompts import TokenSpan, class_token_spans, prompt_token_ids

WORD_START = "\u2581"


def _continues_word(token: str) -> bool:
    return bool(token) and not token.startswith(WORD_START) and token[0].isalnum()


def t5_occurrences(tokenizer: Any, prompt: str, name: str, limit: int) -> list[tuple[int, ...]]:
    """Positions of every whole-word occurrence of ``name`` among the first ``limit`` T5 tokens of ``prompt``."""
    ids = list(tokenizer(prompt, truncation=True, max_length=limit).input_ids)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    pieces = list(tokenizer(name, add_special_tokens=False).input_ids)
    if not pieces:
        raise ValueError(f"class name {name!r} tokenizes to nothing in T5; use a non-empty name.")
    special = set(tokenizer.all_special_ids)
    found = []
    for start in range(len(ids) - len(pieces) + 1):
        if ids[start : start + len(pieces)] != pieces:
            continue
        after = start + len(pieces)
        ends_word = after >= len(ids) or ids[after] in special or not _continues_word(tokens[after])
        if tokens[start].startswith(WORD_START) and ends_word:
            found.append(tuple(range(start, after)))
    return found


def check_prompt_length(tokenizer: Any, prompt: str, limit: int, encoder: str) -> None:
    """Raise when ``prompt`` needs more than ``limit`` tokens (start/end tokens included) in ``encoder``."""
    count = len(prompt_token_ids(tokenizer, prompt, truncate=False))
    if count > limit:
        raise ValueError(
            f"prompt {prompt!r} is {count} {encoder} tokens, over the text encoder's limit of {limit}; the rest "
            "would be cut off silently. Shorten the prompt."
        )


def _t5_spans(
    tokenizer: Any, prompt: str, classes: Sequence[str], limit: int, offset: int
) -> list[TokenSpan]:
    spans = []
    for name in classes:
        occurrences = t5_occurrences(tokenizer, prompt, name, limit)
        if not occurrences:
            raise ValueError(
                f"class {name!r} does not occur in prompt {prompt!r} (as whole words, per the T5 tokenizer); "
                "add it to the prompt."
            )
        spans.append(TokenSpan(name, tuple(tuple(offset + p for p in o) for o in occurrences)))
    return spans


def joint_token_spans(
    pipe: Any, prompt: str, classes: Sequence[str], max_sequence_length: int
) -> list[TokenSpan]:
    """Spans of ``classes`` in the joint-attention text sequence of an SD3 or FLUX pipeline.

    SD3 loaded without T5 (``text_encoder_3=None``, diffusers' low-memory recipe) feeds zeros at the T5 positions,
    which carry no class: the spans are then the CLIP positions only.
    """
    if not hasattr(pipe, "tokenizer_3"):  # FLUX: T5 only
        check_prompt_length(pipe.tokenizer_2, prompt, max_sequence_length, "T5")
        return _t5_spans(pipe.tokenizer_2, prompt, classes, max_sequence_length, 0)
    t5 = pipe.tokenizer_3 if getattr(pipe, "text_encoder_3", None) is not None else None
    if t5 is not None:
        check_prompt_length(t5, prompt, max_sequence_length, "T5")
    clip_limit = int(pipe.tokenizer.model_max_length)
    check_prompt_length(pipe.tokenizer, prompt, clip_limit, "CLIP")
    clip = class_token_spans([pipe.tokenizer, pipe.tokenizer_2], prompt, classes)
    if t5 is None:
        return clip
    t5_spans = _t5_spans(t5, prompt, classes, max_sequence_length, clip_limit)
    return [TokenSpan(c.name, c.occurrences + t.occurrences) for c, t in zip(clip, t5_spans)]
