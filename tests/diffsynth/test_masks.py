"""Refinement, normalisation, upsampling and labelling on hand-made tensors with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsynth.masks import (
    class_columns,
    label,
    normalize,
    refine,
    soft_maps_from_attention,
    to_grid,
    upsample,
)


def _random_stochastic(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, n, generator=g, dtype=torch.float64) * 3, dim=-1)


def test_refine_lights_exactly_the_block_of_the_lit_pixel():
    # Two regions that attend only within themselves: pixels 0-5 and 6-15 of a 4x4 grid.
    n = 16
    blocks = [range(0, 6), range(6, 16)]
    a_s = torch.zeros(n, n)
    for block in blocks:
        for i in block:
            # uneven rows within the block, still row-stochastic
            weights = torch.arange(1, len(block) + 1, dtype=torch.float32)
            a_s[i, list(block)] = weights / weights.sum()
    a_c = torch.zeros(n, 2)
    a_c[8, 0] = 1.0  # class 0: one pixel inside block 2
    a_c[1, 1] = 0.5  # class 1: one pixel inside block 1
    out = refine(a_s, a_c, tau=4)
    assert out.shape == (n, 2)
    assert (out[6:, 0] > 0).all() and (out[:6, 0] == 0).all()
    assert (out[:6, 1] > 0).all() and (out[6:, 1] == 0).all()
    # Without refinement only the lit pixel is on.
    assert (refine(a_s, a_c, tau=0) == a_c).all()


@pytest.mark.parametrize("tau", [1, 2, 3, 4, 7])
def test_refine_equals_the_matrix_power_on_both_code_paths(tau):
    a_s = _random_stochastic(12)
    thin = torch.rand(12, 3, dtype=torch.float64)  # K << N: repeated thin products
    wide = torch.rand(12, 200, dtype=torch.float64)  # K >> N: squaring is cheaper
    power = torch.linalg.matrix_power(a_s, tau)
    torch.testing.assert_close(refine(a_s, thin, tau), power @ thin)
    torch.testing.assert_close(refine(a_s, wide, tau), power @ wide)


def test_refine_batched_and_float32():
    a_s = torch.stack([_random_stochastic(9, s) for s in range(3)]).float()
    a_c = torch.rand(3, 9, 2)
    out = refine(a_s, a_c, tau=4)
    assert out.shape == (3, 9, 2) and out.dtype == torch.float32
    for b in range(3):
        torch.testing.assert_close(
            out[b], torch.linalg.matrix_power(a_s[b], 4) @ a_c[b], rtol=1e-5, atol=1e-6
        )


def test_refine_rejects_bad_shapes_and_tau():
    with pytest.raises(ValueError, match="tau"):
        refine(torch.eye(4), torch.rand(4, 2), tau=-1)
    with pytest.raises(ValueError, match="self_attn"):
        refine(torch.rand(4, 5), torch.rand(4, 2))
    with pytest.raises(ValueError, match="cross_attn"):
        refine(torch.eye(4), torch.rand(5, 2))


def test_normalize_per_class_and_constant_maps():
    maps = torch.stack([torch.linspace(2, 6, 12).reshape(3, 4), torch.full((3, 4), 0.3)])
    out = normalize(maps)
    assert out[0].min() == 0 and out[0].max() == 1
    torch.testing.assert_close(out[0], (maps[0] - 2) / 4)
    assert (out[1] == 0).all()  # no spatial signal -> nothing, not NaN


def test_normalize_does_not_stretch_float_noise_but_keeps_weak_signals():
    g = torch.Generator().manual_seed(0)
    noise = 0.3 + 1e-9 * torch.rand(1, 8, 8, generator=g)  # rounding-level spread: no signal
    assert (normalize(noise) == 0).all()
    weak = 0.3 + 1e-3 * torch.rand(1, 8, 8, generator=g)  # weak but real spread: stretched to [0, 1]
    out = normalize(weak)
    assert out.min() == 0 and out.max() == 1


def test_upsample_shape_and_clamp():
    step = torch.zeros(1, 4, 4)
    step[:, :, 2:] = 1.0  # a sharp edge makes bicubic overshoot on both sides
    out = upsample(step, (16, 24))
    assert out.shape == (1, 16, 24)
    raw = torch.nn.functional.interpolate(step[None], size=(16, 24), mode="bicubic", align_corners=False)
    assert raw.max() > 1 and raw.min() < 0, "test needs overshoot"
    assert out.min() >= 0 and out.max() <= 1
    assert upsample(torch.rand(2, 3, 4, 4), (8, 8)).shape == (2, 3, 8, 8)


def test_class_columns_average_token_pieces():
    cross = torch.zeros(5, 77)
    cross[:, 4] = 1.0
    cross[:, 5] = 0.5
    cross[:, 9] = 0.2
    out = class_columns(cross, [(4, 5), (9,)])
    assert out.shape == (5, 2)
    assert torch.allclose(out[:, 0], torch.full((5,), 0.75)) and torch.allclose(
        out[:, 1], torch.full((5,), 0.2)
    )


def test_to_grid_is_row_major_for_non_square_grids():
    h, w = 2, 3
    maps = torch.arange(h * w, dtype=torch.float32)[:, None]  # [N, K=1], value = flat index
    grid = to_grid(maps, (h, w))
    assert grid.shape == (1, 2, 3)
    assert grid[0, 1, 0] == 3 and grid[0, 0, 2] == 2
    with pytest.raises(ValueError, match="2x2"):
        to_grid(maps, (2, 2))


def test_label_three_regions_exactly():
    soft = torch.zeros(2, 2, 4)
    soft[0, 0] = torch.tensor([0.9, 0.6, 0.59, 0.5])  # class 0 confident, at threshold, uncertain, at beta
    soft[1, 1] = torch.tensor([0.49, 0.0, 0.7, 0.55])  # below beta, zero, class 1, uncertain
    out = label(soft, threshold=0.6, uncertainty_threshold=0.5)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 255, 255], [2, 2, 1, 255]]


def test_label_argmax_custom_indices_and_numpy_input():
    soft = np.zeros((3, 1, 3), dtype=np.float32)
    soft[:, 0, 0] = [0.7, 0.8, 0.65]  # class 1 wins
    soft[:, 0, 1] = [0.1, 0.2, 0.3]
    soft[:, 0, 2] = [0.52, 0.1, 0.1]
    out = label(soft, threshold=0.6, uncertainty_threshold=0.5, ignore_index=200, background_index=7)
    assert out.tolist() == [[1, 7, 200]]


def test_label_validates_thresholds_and_indices():
    soft = torch.rand(2, 4, 4)
    with pytest.raises(ValueError, match=r"uncertainty_threshold=0\.7 and threshold=0\.6"):
        label(soft, threshold=0.6, uncertainty_threshold=0.7)
    with pytest.raises(ValueError, match="background_index"):
        label(soft, background_index=1)
    with pytest.raises(ValueError, match="K >= 1"):
        label(torch.zeros(0, 4, 4))
    # Equal thresholds: no uncertain band at all.
    out = label(soft, threshold=0.5, uncertainty_threshold=0.5)
    assert 255 not in out


def test_soft_maps_from_attention_end_to_end():
    h, w = 4, 6
    n = h * w
    a_s = torch.eye(n)
    cross = torch.zeros(n, 1)
    cross[: n // 2, 0] = 1.0  # top half
    refined, raw = soft_maps_from_attention(a_s, cross, (h, w), (32, 48), tau=4)
    assert refined.shape == raw.shape == (1, 32, 48)
    labels = label(refined)
    assert (labels[:12] == 0).all() and (labels[-12:] == 1).all()
