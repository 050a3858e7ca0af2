"""Pixel decoder: checkpoint geometry of the official models, data flow, and the sine positional encoding."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seemadapt.model.config import focall_config, focalt_config, tiny_config
from seemadapt.model.pixel_decoder import Conv2d, TransformerEncoderPixelDecoder, add_upsampled
from seemadapt.model.position_encoding import PositionEmbeddingSine

RESEARCH = Path(__file__).resolve().parent / "data"  # copies of shared/research/seem_focal{t,l}_v1_keys.txt
PREFIX = "sem_seg_head.pixel_decoder."


def official_shapes(filename: str, prefix: str) -> dict[str, tuple[int, ...]]:
    path = RESEARCH / filename
    shapes = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or not line.startswith(prefix):
            continue
        name, dims = line.split(" ", 1)
        shapes[name[len(prefix) :]] = tuple(int(d) for d in dims.strip("[]").split(",") if d.strip())
    return shapes


@pytest.mark.parametrize(
    ("make_config", "filename", "count"),
    [
        (focalt_config, "seem_focalt_v1_keys.txt", 31_456_256),
        (focall_config, "seem_focall_v1_keys.txt", 32_193_536),
    ],
)
def test_full_size_keys_match_official_checkpoint(make_config, filename, count):
    config = make_config()
    with torch.device("meta"):
        decoder = TransformerEncoderPixelDecoder(config.pixel_decoder, config.backbone.channels)
    ours = {name: tuple(t.shape) for name, t in decoder.state_dict().items()}
    assert ours == official_shapes(filename, PREFIX)
    assert sum(p.numel() for p in decoder.parameters()) == count
    assert not list(decoder.buffers())


def tiny_features(
    batch: int = 2, height: int = 64, width: int = 64, seed: int = 0
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    channels = tiny_config().backbone.channels
    return {
        f"res{i + 2}": torch.randn(
            batch, c, height // 2 ** (i + 2), width // 2 ** (i + 2), generator=generator
        )
        for i, c in enumerate(channels)
    }


@pytest.fixture(scope="module")
def tiny_decoder() -> TransformerEncoderPixelDecoder:
    torch.manual_seed(0)
    config = tiny_config()
    return TransformerEncoderPixelDecoder(config.pixel_decoder, config.backbone.channels)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (128, 64)])
def test_tiny_forward_shapes_and_backward(tiny_decoder, height, width):
    features = tiny_features(height=height, width=width)
    mask_features, multi_scale = tiny_decoder(features)
    assert mask_features.shape == (2, 64, height // 4, width // 4)
    assert [tuple(x.shape) for x in multi_scale] == [
        (2, 64, height // 32, width // 32),
        (2, 64, height // 16, width // 16),
        (2, 64, height // 8, width // 8),
    ]
    assert torch.isfinite(mask_features).all()
    tiny_decoder.zero_grad()
    (mask_features.square().mean() + sum(x.mean() for x in multi_scale)).backward()
    for name, parameter in tiny_decoder.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert tiny_decoder.transformer.encoder.layers[0].linear1.weight.grad.abs().sum() > 0


def test_top_down_dependencies(tiny_decoder):
    """Each output level depends on its own and coarser backbone levels only; mask features on all of them."""
    base = tiny_features()
    with torch.no_grad():
        mask0, scales0 = tiny_decoder(base)
        for changed, unaffected_levels in (("res2", 3), ("res3", 2), ("res4", 1), ("res5", 0)):
            features = dict(base)
            features[changed] = features[changed] + 1.0
            mask1, scales1 = tiny_decoder(features)
            for level in range(3):
                same = torch.equal(scales0[level], scales1[level])
                assert same == (level < unaffected_levels), (changed, level)
            assert not torch.allclose(mask0, mask1)


def test_batch_elements_are_independent(tiny_decoder):
    base = tiny_features()
    other = {k: v.clone() for k, v in base.items()}
    for value in other.values():
        value[1] = torch.randn_like(value[1])
    with torch.no_grad():
        mask0, scales0 = tiny_decoder(base)
        mask1, scales1 = tiny_decoder(other)
    torch.testing.assert_close(mask0[0], mask1[0], rtol=0, atol=1e-5)
    for level0, level1 in zip(scales0, scales1):
        torch.testing.assert_close(level0[0], level1[0], rtol=0, atol=1e-5)
    assert not torch.allclose(mask0[1], mask1[1])


def test_missing_feature_raises(tiny_decoder):
    features = tiny_features()
    del features["res3"]
    with pytest.raises(KeyError, match="res3"):
        tiny_decoder(features)


@pytest.mark.parametrize(("small", "large"), [((4, 6), (8, 12)), ((3, 5), (7, 9))])
def test_add_upsampled_equals_nearest_interpolation_bit_for_bit(small, large):
    """Values and both gradients equal ``x + F.interpolate(y, mode="nearest")`` exactly (2x and fallback sizes)."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 5, *large), torch.randn(2, 5, *small)
    grad = torch.randn(2, 5, *large)
    results = []
    for fn in (add_upsampled, lambda a, b: a + F.interpolate(b, size=a.shape[-2:], mode="nearest")):
        inputs = (x.clone().requires_grad_(True), y.clone().requires_grad_(True))
        out = fn(*inputs)
        results.append((out, *torch.autograd.grad(out, inputs, grad)))
    for got, expected in zip(*results, strict=True):
        assert torch.equal(got, expected)


def test_conv2d_applies_norm_then_activation_and_names_norm():
    conv = Conv2d(2, 2, kernel_size=1, bias=False, norm=nn.GroupNorm(1, 2), activation=torch.relu)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2)[:, :, None, None])
    x = torch.tensor([[[[1.0, 3.0]], [[5.0, 7.0]]]])  # [1, 2, 1, 2]: mean 4, population std sqrt(5)
    expected = torch.relu((x - 4.0) / math.sqrt(5.0 + 1e-5))
    torch.testing.assert_close(conv(x), expected)
    assert set(conv.state_dict()) == {"weight", "norm.weight", "norm.bias"}
    plain = Conv2d(2, 3, kernel_size=1)
    assert set(plain.state_dict()) == {"weight", "bias"}


def test_sine_encoding_hand_values():
    pe = PositionEmbeddingSine(num_pos_feats=4, normalize=True)
    out = pe(torch.zeros(1, 7, 4, 2))  # H = 4, W = 2
    assert out.shape == (1, 8, 4, 2)
    eps = 1e-6
    # y half first: row i -> y = (i + 1) / 4 * 2pi; channels sin(y), cos(y), sin(y / 100), cos(y / 100).
    for row in range(4):
        y = (row + 1) / (4 + eps) * 2 * math.pi
        expected = torch.tensor([math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100)])
        torch.testing.assert_close(out[0, :4, row, 0], expected)
        torch.testing.assert_close(out[0, :4, row, 1], expected)
    # x half: column 0 -> x = pi (sin 0, cos -1), column 1 -> x = 2pi.
    torch.testing.assert_close(out[0, 4:6, 0, 0], torch.tensor([0.0, -1.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0, 4:6, 3, 1], torch.tensor([0.0, 1.0]), atol=1e-5, rtol=0)


def test_sine_encoding_padding_mask_and_validation():
    pe = PositionEmbeddingSine(num_pos_feats=2, normalize=False)
    mask = torch.tensor([[[False, False, True]]])  # last column padded: positions count valid pixels only
    out = pe(torch.zeros(1, 1, 1, 3), mask)
    torch.testing.assert_close(out[0, 2, 0], torch.sin(torch.tensor([1.0, 2.0, 2.0])))
    with pytest.raises(ValueError):
        PositionEmbeddingSine(num_pos_feats=3)
    with pytest.raises(ValueError):
        PositionEmbeddingSine(num_pos_feats=4, normalize=False, scale=1.0)
