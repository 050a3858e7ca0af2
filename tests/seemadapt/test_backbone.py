"""FocalNet backbone: official key layout, shapes on any input size, block semantics, adapter hook, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seemadapt.model.backbone import FocalBlock, FocalDWBlock, FocalModulation, FocalNet
from seemadapt.model.config import BackboneConfig, focall_config, focalt_config, tiny_config
from seemadapt.model.layers import DropPath, drop_path

RESEARCH = Path(__file__).resolve().parent / "data"  # copies of shared/research/seem_focal{t,l}_v1_keys.txt
VARIANTS = ("focal", "focal_dw")


def _official_backbone_keys(filename: str) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}
    for line in (RESEARCH / filename).read_text().splitlines():
        line = line.strip()
        if not line.startswith("backbone."):  # skips '#' comments, blanks and the other modules
            continue
        name, shape = line.split(" ", 1)
        dims = shape.strip().removeprefix("[").removesuffix("]")
        keys[name.removeprefix("backbone.")] = tuple(int(d) for d in dims.split(",") if d.strip())
    return keys


def _tiny(variant: str, **overrides: object) -> FocalNet:
    torch.manual_seed(0)
    config = tiny_config(variant=variant).backbone  # type: ignore[arg-type]
    for name, value in overrides.items():
        setattr(config, name, value)
    return FocalNet(config)


# --- (a) official geometry -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config_fn", "filename", "n_params", "n_keys"),
    [
        (focalt_config, "seem_focalt_v1_keys.txt", 29_922_288, 300),
        (focall_config, "seem_focall_v1_keys.txt", 205_746_936, 504),
    ],
)
def test_state_dict_matches_official_checkpoint(config_fn, filename, n_params, n_keys) -> None:
    expected = _official_backbone_keys(filename)
    with torch.device("meta"):
        model = FocalNet(config_fn().backbone)
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert len(expected) == n_keys
    assert set(ours) - set(expected) == set(), "keys the checkpoint does not have"
    assert set(expected) - set(ours) == set(), "checkpoint keys we do not create"
    assert ours == expected
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert list(model.buffers()) == []


def test_drop_path_rates_and_layerscale_init() -> None:
    config = BackboneConfig(embed_dim=8, depths=(1, 2, 3, 1), focal_levels=(1,) * 4, drop_path_rate=0.3)
    model = FocalNet(config)
    rates = [block.drop_path.drop_prob for _, block, _ in model.blocks()]
    assert rates == pytest.approx([0.3 * i / 6 for i in range(7)])
    names = [name for name, _, _ in model.blocks()]
    assert names[:3] == ["layers.0.blocks.0", "layers.1.blocks.0", "layers.1.blocks.1"]
    assert [c for _, _, c in model.blocks()] == [8, 16, 16, 32, 32, 32, 64]
    for _, block, _ in model.blocks():
        assert torch.all(block.gamma_1 == 1e-4) and torch.all(block.gamma_2 == 1e-4)
        assert block.norm1.eps == 1e-5 and block.adapter is None
    assert model.out_channels == {"res2": 8, "res3": 16, "res4": 32, "res5": 64}
    assert model.out_strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


# --- (b) shapes on tiny models -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [(2, 64, 64), (1, 96, 64), (1, 50, 70)])
def test_forward_shapes_any_size(variant: str, size: tuple[int, int, int]) -> None:
    batch, height, width = size
    model = _tiny(variant).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, height, width))
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for name, channels in zip(out, (16, 32, 64, 128)):
        stride = model.out_strides[name]
        expected = (batch, channels, -(-height // stride), -(-width // stride))  # ceil division
        assert tuple(out[name].shape) == expected, name
        assert out[name].is_contiguous() and torch.isfinite(out[name]).all()


def test_rejects_non_image_input() -> None:
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        _tiny("focal")(torch.randn(1, 1, 32, 32))


def test_variants_build_different_blocks() -> None:
    assert type(_tiny("focal").layers[0].blocks[0]) is FocalBlock
    assert type(_tiny("focal_dw").layers[0].blocks[0]) is FocalDWBlock


# --- (c) semantics on hand-made weights --------------------------------------------------------------------------


def _hand_made_modulation(
    normalize: bool,
) -> tuple[FocalModulation, torch.Tensor, torch.Tensor, torch.Tensor]:
    """C=2, L=2. f: q = x, ctx = 0.5 x + 0.1, gate_l = x_0 * (l + 1) / 4 + 0.2 l; focal convs are identity
    (centre tap 1) so level l's context is GELU applied l times; h = 2 * identity; proj = identity."""
    mod = FocalModulation(dim=2, focal_level=2, focal_window=3, normalize_modulator=normalize)
    weight = torch.zeros(7, 2)
    bias = torch.zeros(7)
    weight[0, 0] = weight[1, 1] = 1.0  # q
    weight[2, 0] = weight[3, 1] = 0.5  # ctx
    bias[2:4] = 0.1
    for level in range(3):  # gates
        weight[4 + level, 0] = (level + 1) / 4
        bias[4 + level] = 0.2 * level
    with torch.no_grad():
        mod.f.weight.copy_(weight)
        mod.f.bias.copy_(bias)
        for layer in mod.focal_layers:
            conv = layer[0]
            conv.weight.zero_()
            conv.weight[:, :, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0
        mod.h.weight.copy_(2 * torch.eye(2).view(2, 2, 1, 1))
        mod.h.bias.zero_()
        mod.proj.weight.copy_(torch.eye(2))
        mod.proj.bias.zero_()
    x = torch.randn(1, 5, 6, 2)
    gates = [x[..., :1] * (level + 1) / 4 + 0.2 * level for level in range(3)]
    ctx0 = 0.5 * x + 0.1
    return mod, x, ctx0, torch.stack(gates)


@pytest.mark.parametrize("normalize", [True, False])
def test_focal_modulation_formula(normalize: bool) -> None:
    mod, x, ctx0, gates = _hand_made_modulation(normalize)
    ctx1 = F.gelu(ctx0)
    ctx2 = F.gelu(ctx1)
    global_ctx = F.gelu(ctx2.mean(dim=(1, 2), keepdim=True))  # NHWC: mean over H, W
    modulator = gates[0] * ctx1 + gates[1] * ctx2 + gates[2] * global_ctx
    if normalize:
        modulator = modulator / 3
    expected = x * (2 * modulator)
    torch.testing.assert_close(mod(x), expected, rtol=1e-5, atol=1e-6)


def test_focal_layers_are_depthwise_without_bias_and_grow_by_two() -> None:
    mod = FocalModulation(dim=4, focal_level=4, focal_window=3)
    for level, layer in enumerate(mod.focal_layers):
        conv = layer[0]
        assert conv.kernel_size == (2 * level + 3,) * 2 and conv.groups == 4 and conv.bias is None
        assert isinstance(layer[1], nn.GELU) and layer[1].approximate == "none"


def test_mlp_uses_exact_gelu() -> None:
    block = FocalBlock(dim=3, focal_level=1, focal_window=3, mlp_ratio=1.0)
    with torch.no_grad():
        for linear in (block.mlp.fc1, block.mlp.fc2):
            linear.weight.copy_(torch.eye(3))
            linear.bias.zero_()
    x = torch.linspace(-3, 3, 30).view(1, 2, 5, 3)
    exact = 0.5 * x * (1 + torch.erf(x / 2**0.5))
    torch.testing.assert_close(block.mlp(x), exact)


def _zero_branches(block: FocalBlock) -> None:
    """Modulation and MLP output exactly zero; norms get a recognisable affine."""
    with torch.no_grad():
        for linear in (block.modulation.proj, block.mlp.fc2):
            linear.weight.zero_()
            linear.bias.zero_()
        block.gamma_1.fill_(0.5)
        block.gamma_2.fill_(0.25)
        block.norm1.weight.fill_(3.0)
        block.norm1.bias.copy_(torch.arange(4.0))
        block.norm2.weight.fill_(2.0)
        block.norm2.bias.fill_(-1.0)


def test_focal_block_norm_sits_inside_the_residual() -> None:
    block = FocalBlock(dim=4, focal_level=2, focal_window=3).eval()
    _zero_branches(block)
    x = torch.randn(2, 3, 5, 4)
    # norm(0) is its bias, so each branch adds gamma * bias and x passes through unnormalised.
    expected = x + 0.5 * torch.arange(4.0) + 0.25 * -1.0
    torch.testing.assert_close(block(x), expected)


def test_focal_dw_block_norm_follows_the_residual() -> None:
    block = FocalDWBlock(dim=4, focal_level=2, focal_window=3).eval()
    _zero_branches(block)
    with torch.no_grad():
        for conv in (block.dw1, block.dw2):
            conv.weight.zero_()
        block.dw1.bias.fill_(0.7)  # dw1 adds a constant before norm1; dw2 adds 0
        block.dw2.bias.zero_()
    x = torch.randn(2, 3, 5, 4)
    y = F.layer_norm(x + 0.7, (4,), torch.full((4,), 3.0), torch.arange(4.0), eps=1e-5)
    expected = F.layer_norm(y, (4,), torch.full((4,), 2.0), torch.full((4,), -1.0), eps=1e-5)
    torch.testing.assert_close(block(x), expected)


def test_focal_dw_positional_conv_is_depthwise_residual() -> None:
    block = FocalDWBlock(dim=4, focal_level=1, focal_window=3).eval()
    _zero_branches(block)
    with torch.no_grad():
        for norm in (block.norm1, block.norm2):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        block.dw2.weight.zero_()
        block.dw2.bias.zero_()
        block.dw1.bias.zero_()
        block.dw1.weight.zero_()
        block.dw1.weight[:, 0, 1, 2] = 1.0  # right neighbour
    x = torch.randn(1, 3, 5, 4)
    shifted = torch.zeros_like(x)
    shifted[:, :, :-1] = x[:, :, 1:]
    expected = F.layer_norm(F.layer_norm(x + shifted, (4,), eps=1e-5), (4,), eps=1e-5)
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize(("variant", "padding"), [("focal", 2), ("focal_dw", 3)])
@pytest.mark.parametrize(("height", "width"), [(16, 24), (14, 21)])
def test_stem_padding_and_alignment(variant: str, padding: int, height: int, width: int) -> None:
    model = _tiny(variant)
    assert model.patch_embed.proj.padding == (padding, padding)
    captured = {}
    model.patch_embed.proj.register_forward_hook(lambda _m, _i, out: captured.setdefault("stem", out))
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        model.patch_embed.proj.weight[0, 0, 3, 3] = (
            1.0  # output (i, j) reads input (4i + 3 - pad, 4j + 3 - pad)
        )
        image = torch.arange(1.0, height * width + 1).view(1, 1, height, width).expand(1, 3, -1, -1)
        model(image.contiguous())
    stem = captured["stem"][0, 0]
    padded_h, padded_w = -(-height // 4) * 4, -(-width // 4) * 4
    assert tuple(stem.shape) == (padded_h // 4, padded_w // 4)
    padded = F.pad(image[0, 0], (0, padded_w - width, 0, padded_h - height))  # zero right/bottom
    offset = 3 - padding
    for i in range(stem.shape[0]):
        for j in range(stem.shape[1]):
            assert stem[i, j] == padded[4 * i + offset, 4 * j + offset]


# --- (d) adapter hook ---------------------------------------------------------------------------------------------


class _Recorder(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), 3.0))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return x * self.scale


@pytest.mark.parametrize("variant", VARIANTS)
def test_adapter_hook_applies_to_modulation_output(variant: str) -> None:
    model = _tiny(variant).eval()
    keys_before = set(model.state_dict())
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        reference = model(x)
    _, block, channels = next(model.blocks())
    adapter = _Recorder(channels)
    block.adapter = adapter
    assert {k for k in model.state_dict() if k not in keys_before} == {"layers.0.blocks.0.adapter.scale"}
    with torch.no_grad():
        adapted = model(x)
    assert adapter.seen == [(1, 16, 12, channels)]  # NHWC modulation output at stride 4
    assert not torch.allclose(adapted["res2"], reference["res2"])
    block.adapter = None
    assert set(model.state_dict()) == keys_before
    with torch.no_grad():
        torch.testing.assert_close(model(x)["res2"], reference["res2"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_adapter_replaces_modulation_output_before_norm_and_layerscale(variant: str) -> None:
    block = (FocalBlock if variant == "focal" else FocalDWBlock)(dim=4, focal_level=2, focal_window=3).eval()
    block.adapter = _Recorder(4)
    x = torch.randn(1, 3, 3, 4)
    expected_branch = 3 * block.modulation(x if variant == "focal" else x + block._depthwise(block.dw1, x))
    with torch.no_grad():
        block.adapter.scale.fill_(3.0)
        if variant == "focal":
            got = block(x)
            mid = x + block.gamma_1 * block.norm1(expected_branch)
            expected = mid + block.gamma_2 * block.norm2(block.mlp(mid))
        else:
            got = block(x)
            h = x + block._depthwise(block.dw1, x)
            mid = block.norm1(h + block.gamma_1 * expected_branch)
            mid = mid + block._depthwise(block.dw2, mid)
            expected = block.norm2(mid + block.gamma_2 * block.mlp(mid))
    torch.testing.assert_close(got, expected)


# --- (e) freezing and stochastic depth ----------------------------------------------------------------------------


def test_drop_path_layer() -> None:
    x = torch.ones(1000, 3, 2)
    assert torch.equal(drop_path(x, 0.5, training=False), x)
    torch.manual_seed(0)
    y = drop_path(x, 0.25, training=True)
    per_sample = y.flatten(1)
    assert torch.all(
        (per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)
    )  # whole samples kept or dropped
    assert 0.15 < (per_sample[:, 0] == 0).float().mean() < 0.35
    assert list(DropPath(0.2).parameters()) == [] and list(DropPath(0.2).buffers()) == []
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_freeze_keeps_eval_mode_and_stops_gradients(variant: str) -> None:
    model = _tiny(variant, drop_path_rate=0.9)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    torch.manual_seed(1)
    a = model(x)["res5"]
    b = model(x)["res5"]
    assert not torch.allclose(a, b), "stochastic depth should be active in train mode"

    model.freeze()
    model.train()
    assert not model.training and not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(x)["res5"], model(x)["res5"], rtol=0, atol=0)

    model.unfreeze()
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_leaves_adapters_trainable_and_in_train_mode() -> None:
    model = _tiny("focal")
    _, block, channels = next(model.blocks())
    block.adapter = _Recorder(channels)
    model.freeze()
    model.train()
    assert block.adapter.training and not block.training and not block.drop_path.training
    assert block.adapter.scale.requires_grad
    assert not block.gamma_1.requires_grad
    model.eval()
    assert not block.adapter.training
    out = model(torch.randn(1, 3, 32, 32))["res5"].sum()
    out.backward()
    assert block.adapter.scale.grad is not None and block.gamma_1.grad is None


def test_freeze_without_eval_mode_reproduces_official_stochastic_depth() -> None:
    model = _tiny("focal", drop_path_rate=0.9).freeze(eval_mode=False)
    model.train()
    assert model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(2)
    assert not torch.allclose(model(x)["res5"], model(x)["res5"])
