"""Class-token spans in the joint text sequence: T5 for FLUX, CLIP + T5 for SD3; prompts over the limit."""

from __future__ import annotations

import pytest

from diffsynth.dit_tokens import joint_token_spans, t5_occurrences
from diffsynth.testing import tiny_pipeline
from diffsynth.tiny_tokenizers import t5_tokenizer


@pytest.fixture(scope="module")
def t5():
    return t5_tokenizer()


def test_t5_tokenizer_keeps_t5_conventions(t5):
    ids = t5("a photo of mold").input_ids
    assert t5.convert_ids_to_tokens(ids) == ["\u2581a", "\u2581photo", "\u2581of", "\u2581mold", "</s>"]
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)


def test_t5_spans_are_whole_words(t5):
    prompt = "mold on a wall, light mold; moldy bagpipe pipe"
    # tokens: mold on a wall , light mold ; mold y bagpipe pipe </s>
    assert t5_occurrences(t5, prompt, "mold", 512) == [(0,), (6,)]
    assert t5_occurrences(t5, prompt, "pipe", 512) == [(11,)]
    assert t5_occurrences(t5, prompt, "light mold", 512) == [(5, 6)]
    assert t5_occurrences(t5, "a photo of mold", "mold", 3) == []  # after the limit


def test_flux_spans_are_t5_positions():
    pipe = tiny_pipeline("flux")
    spans = joint_token_spans(pipe, "a photo of mold on a wall, light mold", ["mold", "wall"], 512)
    assert [s.to_dict() for s in spans] == [
        {"name": "mold", "positions": [3, 9]},
        {"name": "wall", "positions": [6]},
    ]


def test_sd3_spans_join_clip_and_t5_positions():
    pipe = tiny_pipeline("sd3")
    spans = joint_token_spans(pipe, "a photo of mold on a wall", ["mold", "wall"], 256)
    # CLIP: <start> a photo of mold on a wall -> mold at 4, wall at 7; T5 (no start token) after 77 CLIP slots.
    assert [s.to_dict() for s in spans] == [
        {"name": "mold", "positions": [4, 77 + 3]},
        {"name": "wall", "positions": [7, 77 + 6]},
    ]


def test_missing_class_names_the_prompt():
    pipe = tiny_pipeline("flux")
    with pytest.raises(ValueError, match="'stain' does not occur in prompt 'a photo of mold'"):
        joint_token_spans(pipe, "a photo of mold", ["stain"], 512)


@pytest.mark.parametrize(("kind", "limit", "encoder"), [("flux", 8, "T5"), ("sd3", 256, "CLIP")])
def test_prompt_over_the_encoder_limit_is_an_error(kind, limit, encoder):
    pipe = tiny_pipeline(kind)
    prompt = "a photo of mold on a wall " * 20  # 121 CLIP tokens, 121 T5 tokens
    with pytest.raises(ValueError, match=rf"prompt 'a photo of mold.*{encoder} tokens, over .* limit of"):
        joint_token_spans(pipe, prompt, ["mold"], limit)
