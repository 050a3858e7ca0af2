"""Hand-made checks of the decoder's attention layout (spec 5.3): orders, partner blocks, padding, prompt blocks."""

from __future__ import annotations

import pytest
import torch

from seemadapt.model.attention_layout import (
    SEEM_V1_VARIABLES,
    AttentionLayout,
    VariableSpec,
    mask_from_logits,
    unblock_full_rows,
)


def as_bool(rows: list[str]) -> torch.Tensor:
    """'0' = open, '1' = blocked; spaces are ignored."""
    return torch.tensor([[c == "1" for c in row.replace(" ", "")] for row in rows])


ALL_LENGTHS = {
    "memories_spatial": 2,
    "tokens_spatial": 3,
    "tokens_grounding": 4,
    "queries_spatial": 5,
    "queries_grounding": 6,
    "queries_object": 7,
}


def test_sequence_orders_follow_the_spec():
    layout = AttentionLayout()
    assert layout.order(ALL_LENGTHS, "self") == [
        "queries_object",
        "queries_grounding",
        "queries_spatial",
        "tokens_grounding",
        "tokens_spatial",
        "memories_spatial",
    ]
    assert layout.order(ALL_LENGTHS, "cross") == [
        "queries_object",
        "queries_grounding",
        "queries_spatial",
        "memories_spatial",
    ]
    ranges = layout.ranges(ALL_LENGTHS, "self")
    assert ranges["queries_object"] == slice(0, 7)
    assert ranges["queries_grounding"] == slice(7, 13)
    assert ranges["queries_spatial"] == slice(13, 18)
    assert ranges["tokens_grounding"] == slice(18, 22)
    assert ranges["tokens_spatial"] == slice(22, 25)
    assert ranges["memories_spatial"] == slice(25, 27)
    cross = layout.ranges(ALL_LENGTHS, "cross")
    assert cross["memories_spatial"] == slice(18, 20)
    # Absent variables simply disappear from the sequence.
    subset = layout.ranges({"tokens_grounding": 4, "queries_object": 7, "queries_grounding": 7}, "cross")
    assert subset == {"queries_object": slice(0, 7), "queries_grounding": slice(7, 14)}


def test_partner_blocks_object_and_grounding():
    layout = AttentionLayout()
    lengths = {"queries_object": 2, "queries_grounding": 2, "tokens_grounding": 3}
    mask = layout.self_attention_mask(lengths, batch_size=1, num_heads=1)
    expected = as_bool(
        [
            "00 11 111",  # object queries see object queries only
            "00 11 111",
            "11 00 000",  # grounding queries see grounding queries and text tokens
            "11 00 000",
            "11 00 000",  # text tokens see grounding queries and text tokens
            "11 00 000",
            "11 00 000",
        ]
    )
    assert torch.equal(mask[0], expected)


def test_padded_tokens_are_blocked_as_queries_and_keys_per_image():
    layout = AttentionLayout()
    lengths = {"queries_object": 2, "queries_grounding": 2, "tokens_grounding": 3}
    padding = torch.tensor([[False, False, False], [False, False, True]])
    mask = layout.self_attention_mask(
        lengths, batch_size=2, num_heads=1, padding={"tokens_grounding": padding}
    )
    unpadded = as_bool(
        ["00 11 111", "00 11 111", "11 00 000", "11 00 000", "11 00 000", "11 00 000", "11 00 000"]
    )
    padded = as_bool(
        ["00 11 111", "00 11 111", "11 00 001", "11 00 001", "11 00 001", "11 00 001", "11 11 111"]
    )
    assert torch.equal(mask[0], unpadded)
    assert torch.equal(mask[1], padded)
    assert mask[1, 6].all()  # the padded row is fully blocked: the attention must return zeros there


def test_spatial_prompts_are_block_diagonal():
    layout = AttentionLayout()
    lengths = {"queries_spatial": 4, "tokens_spatial": 3, "memories_spatial": 2}
    groups = {
        "queries_spatial": torch.tensor([0, 0, 1, 1]),
        "tokens_spatial": torch.tensor([[0, 1, -1]]),
        "memories_spatial": torch.tensor([0, 1]),
    }
    padding = {"tokens_spatial": torch.tensor([[False, False, True]])}
    mask = layout.self_attention_mask(lengths, 1, 1, padding=padding, groups=groups)
    expected = as_bool(
        [
            "0011 011 01",  # prompt-0 queries: own queries, own tokens, own memories
            "0011 011 01",
            "1100 101 10",  # prompt-1 queries
            "1100 101 10",
            "1111 011 11",  # prompt-0 token: tokens of prompt 0 only
            "1111 101 11",  # prompt-1 token
            "1111 111 11",  # padded token
            "1111 111 01",  # memory of prompt 0: memories of prompt 0 only
            "1111 111 10",
        ]
    )
    assert torch.equal(mask[0], expected)


def test_groups_only_restrict_grouped_partner_pairs():
    """Without groups, partners are fully open; groups never open a non-partner block."""
    layout = AttentionLayout()
    lengths = {"queries_object": 1, "queries_spatial": 2, "tokens_spatial": 2}
    open_mask = layout.self_attention_mask(lengths, 1, 1)[0]
    assert not open_mask[1:3, 1:5].any()
    grouped = layout.self_attention_mask(
        lengths,
        1,
        1,
        groups={"queries_spatial": torch.tensor([0, 0]), "tokens_spatial": torch.tensor([[0, 0]])},
    )[0]
    assert torch.equal(grouped, open_mask)
    assert grouped[0, 1:].all() and grouped[1:, 0].all()


def test_heads_are_repeated_batch_major():
    layout = AttentionLayout()
    lengths = {"queries_object": 1, "queries_grounding": 1, "tokens_grounding": 2}
    padding = torch.tensor([[False, True], [True, False]])
    base = layout.self_attention_mask(lengths, 2, 1, padding={"tokens_grounding": padding})
    assert not torch.equal(base[0], base[1])
    repeated = layout.self_attention_mask(lengths, 2, 3, padding={"tokens_grounding": padding})
    assert repeated.shape == (6, 4, 4)
    for b in range(2):
        for h in range(3):
            assert torch.equal(repeated[b * 3 + h], base[b])


def test_mask_from_logits_thresholds_and_repeats_batch_major():
    logits = torch.tensor(
        [
            [[[1.0, -1.0], [0.0, -0.1]], [[-2.0, -2.0], [-2.0, -2.0]]],
            [[[-1.0, 1.0], [1.0, 1.0]], [[3.0, -3.0], [-3.0, 3.0]]],
        ]
    )  # [B=2, Q=2, 2, 2]
    mask = mask_from_logits(logits, (2, 2), num_heads=2)
    assert mask.shape == (4, 2, 4)
    expected_b0 = torch.tensor(
        [[False, True, False, True], [True, True, True, True]]
    )  # sigmoid(0) = 0.5 is open
    expected_b1 = torch.tensor([[True, False, False, False], [False, True, True, False]])
    assert torch.equal(mask[0], expected_b0) and torch.equal(mask[1], expected_b0)
    assert torch.equal(mask[2], expected_b1) and torch.equal(mask[3], expected_b1)
    assert not mask.requires_grad


def test_mask_from_logits_resizes_bilinearly():
    logits = torch.full((1, 1, 8, 8), -5.0)
    logits[..., :4] = 5.0  # left half on
    mask = mask_from_logits(logits, (2, 2), num_heads=1)
    assert torch.equal(mask[0, 0], torch.tensor([False, True, False, True]))


def test_unblock_full_rows():
    mask = torch.tensor([[[True, True, True], [True, False, True], [False, False, False]]])
    out = unblock_full_rows(mask)
    assert torch.equal(
        out, torch.tensor([[[False, False, False], [True, False, True], [False, False, False]]])
    )
    assert mask[0, 0].all()  # the input is not modified


def test_layout_validation():
    with pytest.raises(ValueError, match="unknown variables"):
        AttentionLayout([VariableSpec("a", True, ("b",))])
    with pytest.raises(ValueError, match="duplicate"):
        AttentionLayout([VariableSpec("a", True, ("a",)), VariableSpec("a", True, ("a",))])
    layout = AttentionLayout(SEEM_V1_VARIABLES)
    with pytest.raises(KeyError):
        layout.ranges({"queries_bogus": 1}, "self")
    with pytest.raises(ValueError, match="expected"):
        layout.self_attention_mask(
            {"queries_object": 1, "queries_grounding": 1, "tokens_grounding": 2},
            2,
            1,
            padding={"tokens_grounding": torch.zeros(2, 3, dtype=torch.bool)},
        )
