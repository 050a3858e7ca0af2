"""The click distance transforms: SEEM's convolutional approximation (training default) and the exact one."""

import math

import numpy as np
import pytest
import torch

from seemadapt.model.distance import conv_distance_transform, deepest_point
from seemadapt.model.interactive import Click, add_corrective_clicks, next_click

H = 0.35


def soft_min(direct: int, diagonal: int) -> float:
    """-h log(sum of the kernel weights of the outside neighbours): one step of the cascade."""
    return -H * math.log(direct * math.exp(-1 / H) + diagonal * math.exp(-math.sqrt(2) / H))


def test_conv_distance_transform_follows_its_definition():
    image = torch.ones(1, 1, 5, 5)
    image[0, 0, 1:4, 1:4] = 0  # a 3x3 hole: its ring is reached at step 0, its centre at step 1
    out = conv_distance_transform(image)[0, 0].double()
    corner, edge = soft_min(2, 3), soft_min(1, 2)
    # step 1 adds (1 * 3) // 2 = 1, then the centre sees all 8 neighbours outside
    centre = 1 + soft_min(4, 4)
    expected = torch.tensor(
        [[corner, edge, corner], [edge, centre, edge], [corner, edge, corner]], dtype=torch.float64
    )
    torch.testing.assert_close(out[1:4, 1:4], expected, atol=1e-6, rtol=0)
    assert out[0].abs().sum() == 0 and out[:, 0].abs().sum() == 0  # outside pixels: 0
    with pytest.raises(ValueError, match="B, C, H, W"):
        conv_distance_transform(torch.ones(5, 5))


def test_approximate_and_exact_deepest_points_differ_where_the_metrics_do():
    notch = np.zeros((16, 16), dtype=bool)
    notch[2:14, 2:14] = True
    notch[2:6, 2:6] = False  # a 12x12 square without its top-left 4x4 corner
    assert deepest_point(notch, "exact") == (8, 9)  # Euclidean: (8, 9) and (9, 9) tie, first in raster order
    assert deepest_point(notch, "approximate") == (9, 9)  # the soft minimum puts (9, 9) half a pixel deeper
    assert deepest_point(notch) == (8, 9)  # exact by default (interactive use)
    assert deepest_point(np.zeros((4, 4), dtype=bool), "approximate") is None
    with pytest.raises(ValueError, match="method"):
        deepest_point(notch, "manhattan")  # type: ignore[arg-type]


def test_deepest_point_on_a_crop_equals_the_whole_canvas():
    rng = np.random.default_rng(0)
    for _ in range(20):
        region = rng.random((6, 7)) > 0.3
        region = np.kron(region, np.ones((3, 3), dtype=bool))[: 17 + rng.integers(4), :]
        canvas = torch.from_numpy(~np.pad(region, 1)).float()[None, None]
        whole = conv_distance_transform(canvas)[0, 0, 1:-1, 1:-1].reshape(-1)
        index = int(torch.argmax(whole))
        assert deepest_point(region, "approximate") == (index // region.shape[1], index % region.shape[1])


def test_training_clicks_use_the_approximate_transform_by_default():
    gt = torch.zeros(1, 32, 32, dtype=torch.bool)
    gt[0, 2:14, 2:14] = True
    gt[0, 2:6, 2:6] = False
    empty = [torch.zeros(1, 32, 32, dtype=torch.bool)]
    prev = torch.full((1, 1, 8, 8), -10.0)  # predicts nothing: the whole target is a false negative
    _, _, clicks = add_corrective_clicks(prev, [gt], empty, empty)
    assert clicks == [[Click(9, 9, True)]]
    _, _, clicks = add_corrective_clicks(prev, [gt], empty, empty, distance="exact")
    assert clicks == [[Click(8, 9, True)]]
    assert next_click(np.zeros((32, 32), bool), gt[0].numpy()) == Click(8, 9, True)  # interactive: exact
