"""Class-token spans with the real CLIP BPE tokenizer (offline, from the open-clip wheel)."""

from __future__ import annotations

import pytest

from diffsynth.prompts import (
    TokenSpan,
    class_prompt,
    class_token_spans,
    pipeline_tokenizers,
    prompt_token_ids,
    with_class_names,
)
from diffsynth.testing import clip_tokenizer, tiny_pipeline


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer()


def test_single_token_classes_sit_after_the_start_token(tok):
    # "a photo of mold on a wall": every word is one CLIP token, so positions are word index + 1.
    spans = class_token_spans(tok, "a photo of mold on a wall", ["mold", "wall"])
    assert [s.positions for s in spans] == [(4,), (7,)]
    tokens = tok.convert_ids_to_tokens(prompt_token_ids(tok, "a photo of mold on a wall"))
    assert tokens[4] == "mold</w>" and tokens[7] == "wall</w>"


def test_multi_word_classes_cover_every_piece(tok):
    spans = class_token_spans(tok, "a broken pipe under light mold", ["light mold", "broken pipe"])
    assert spans[0] == TokenSpan("light mold", ((5, 6),))
    assert spans[1] == TokenSpan("broken pipe", ((2, 3),))


def test_word_split_into_several_bpe_pieces(tok):
    word = "efflorescence"
    pieces = tok(word, add_special_tokens=False).input_ids
    assert len(pieces) > 1, "test needs a word CLIP splits"
    (span,) = class_token_spans(tok, f"white {word} on bricks", [word])
    assert span.positions == tuple(range(2, 2 + len(pieces)))
    ids = prompt_token_ids(tok, f"white {word} on bricks")
    assert [ids[p] for p in span.positions] == pieces
    # The class after it is shifted by the extra pieces, not by one word.
    (bricks,) = class_token_spans(tok, f"white {word} on bricks", ["bricks"])
    assert bricks.positions == (2 + len(pieces) + 1,)


def test_repeated_words_give_every_occurrence(tok):
    (span,) = class_token_spans(tok, "mold on a wall next to more mold", ["mold"])
    assert span.occurrences == ((1,), (8,))
    assert span.positions == (1, 8)


def test_case_and_punctuation_do_not_matter(tok):
    (span,) = class_token_spans(tok, "Mold, everywhere.", ["mold"])
    assert span.positions == (1,)


@pytest.mark.parametrize(
    ("prompt", "name"),
    [("a bagpipe in a room", "pipe"), ("two pipes on a wall", "pipe"), ("a moldy wall", "mold")],
)
def test_a_class_inside_another_word_is_not_found(tok, prompt, name):
    with pytest.raises(ValueError, match=name) as info:
        class_token_spans(tok, prompt, [name])
    assert prompt in str(info.value)


def test_missing_class_names_class_and_prompt(tok):
    with pytest.raises(ValueError) as info:
        class_token_spans(tok, "a photo of a kitchen", ["mold", "kitchen"])
    message = str(info.value)
    assert "'mold'" in message and "'a photo of a kitchen'" in message and "class_prompt" in message


def test_class_beyond_the_77_token_limit(tok):
    prompt = "a " * 90 + "mold"
    with pytest.raises(ValueError, match="77-token limit"):
        class_token_spans(tok, prompt, ["mold"])


def test_empty_and_duplicate_classes_are_rejected(tok):
    with pytest.raises(ValueError, match="empty"):
        class_token_spans(tok, "mold", [])
    with pytest.raises(ValueError, match="twice"):
        class_token_spans(tok, "mold", ["mold", "mold"])


def test_sdxl_tokenizers_agree_and_are_both_used():
    pipe = tiny_pipeline("sdxl")
    tokenizers = pipeline_tokenizers(pipe)
    assert len(tokenizers) == 2 and tokenizers[1].pad_token == "!"
    prompt = "a broken pipe and light mold on a wall"
    spans = class_token_spans(tokenizers, prompt, ["broken pipe", "light mold", "wall"])
    assert [s.positions for s in spans] == [(2, 3), (5, 6), (9,)]
    # Each tokenizer alone finds the same positions.
    for t in tokenizers:
        assert class_token_spans(t, prompt, ["broken pipe", "light mold", "wall"]) == spans


class _ShiftedTokenizer:
    """A tokenizer that puts an extra token after the start token: positions disagree with CLIP's."""

    def __init__(self, inner):
        self.inner = inner
        self.model_max_length = inner.model_max_length

    def __call__(self, text, add_special_tokens=True, **kwargs):
        out = self.inner(text, add_special_tokens=add_special_tokens, **kwargs)
        if add_special_tokens:
            out["input_ids"] = [out.input_ids[0], 320, *out.input_ids[1:]]
        return out

    def convert_ids_to_tokens(self, ids):
        return self.inner.convert_ids_to_tokens(ids)


def test_disagreeing_tokenizers_are_an_error(tok):
    with pytest.raises(ValueError, match="disagree"):
        class_token_spans([tok, _ShiftedTokenizer(tok)], "a photo of mold", ["mold"])


def test_class_prompt_helpers(tok):
    assert class_prompt(["mold", "stain", "broken pipe"]) == "mold, stain, broken pipe"
    text = with_class_names("a bathroom", ["mold", "stain"])
    assert text == "a bathroom; mold, stain"
    spans = class_token_spans(tok, text, ["mold", "stain"])
    assert [s.positions for s in spans] == [(4,), (6,)]
