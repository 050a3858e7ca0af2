"""Adapter modules: exact identity (or zero) at init, any feature size, gradients, the fork-faithful variants, LoRA."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seemadapt.adapters import (
    AdaptFormer,
    ChannelSpatialAdapter,
    LoRASpec,
    VLAdapter,
    inject_lora,
    load_lora,
    save_lora,
)
from seemadapt.adapters.lora import lora_module_names, lora_parameter_names, resolve_lora_targets

# ---------------------------------------------------------------------- channel + spatial adapter


@pytest.mark.parametrize("shape", [(2, 8, 8, 16), (2, 7, 9, 16), (1, 1, 1, 16), (3, 5, 2, 16)])
def test_channel_spatial_adapter_is_exact_identity_at_init(shape):
    torch.manual_seed(0)
    adapter = ChannelSpatialAdapter(16)
    x = torch.randn(shape)
    assert torch.equal(adapter(x), x)


@pytest.mark.parametrize("shape", [(2, 7, 9, 16), (2, 8, 8, 16), (1, 1, 3, 16), (2, 25, 42, 16)])
def test_channel_spatial_adapter_handles_any_size_and_matches_its_formula(shape):
    """Once trained (random weights here) the branch is non-zero; odd sizes are cropped, not crashed on."""
    torch.manual_seed(0)
    adapter = ChannelSpatialAdapter(16, reduction=4)
    nn.init.normal_(adapter.spatial[2].weight, std=0.1)
    x = torch.randn(shape)
    y = adapter(x)
    assert y.shape == x.shape

    w1, w2 = adapter.channel[0].weight, adapter.channel[2].weight
    gate = torch.sigmoid(F.relu(x.mean(dim=(1, 2)) @ w1.t()) @ w2.t())
    gated = (x * gate[:, None, None, :]).permute(0, 3, 1, 2)
    hidden = F.relu(F.conv2d(gated, adapter.spatial[0].weight, stride=2, padding=1))
    full = F.conv_transpose2d(hidden, adapter.spatial[2].weight, stride=2, padding=1)
    assert full.shape[-2:] == (2 * ((shape[1] + 1) // 2), 2 * ((shape[2] + 1) // 2))
    expected = x + full[:, :, : shape[1], : shape[2]].permute(0, 2, 3, 1)
    torch.testing.assert_close(y, expected)
    assert (y - x).abs().max() > 1e-3


def test_channel_gate_opens_and_closes_the_spatial_branch():
    torch.manual_seed(0)
    adapter = ChannelSpatialAdapter(8, reduction=2)
    nn.init.normal_(adapter.spatial[2].weight, std=0.1)
    x = torch.rand(1, 6, 6, 8) + 0.5  # positive means, so the gate logits follow the sign of the weights
    with torch.no_grad():
        adapter.channel[0].weight.fill_(1.0)
        adapter.channel[2].weight.fill_(-100.0)  # gate -> 0: the branch sees zeros
        closed = adapter(x)
        adapter.channel[2].weight.fill_(100.0)  # gate -> 1: the branch sees x
        opened = adapter(x)
        branch = F.conv_transpose2d(
            F.relu(F.conv2d(x.permute(0, 3, 1, 2), adapter.spatial[0].weight, stride=2, padding=1)),
            adapter.spatial[2].weight,
            stride=2,
            padding=1,
        ).permute(0, 2, 3, 1)
    torch.testing.assert_close(closed, x)
    torch.testing.assert_close(opened, x + branch)


def test_channel_spatial_adapter_trains_from_the_first_step():
    torch.manual_seed(0)
    adapter = ChannelSpatialAdapter(16)
    x = torch.randn(2, 7, 9, 16)
    target = torch.randn_like(x)
    (adapter(x) * target).sum().backward()
    assert adapter.spatial[2].weight.grad.abs().sum() > 0  # the zero layer itself learns at step 0
    torch.optim.SGD(adapter.parameters(), lr=0.1).step()
    adapter.zero_grad()
    (adapter(x) * target).sum().backward()
    for name, param in adapter.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_channel_spatial_adapter_convs_are_channels_last_and_compute_as_with_nchw_weights():
    """Its convs read channels-last views; channels-last weights spare torch the weight and gradient copies (the
    gradient arrives in the weight's layout) and change no value, forward or backward."""
    torch.manual_seed(0)
    adapter = ChannelSpatialAdapter(32)
    nn.init.normal_(adapter.spatial[2].weight, std=0.1)
    plain = ChannelSpatialAdapter(32)
    plain.load_state_dict(adapter.state_dict())
    plain.spatial.to(memory_format=torch.contiguous_format)
    x = torch.randn(2, 9, 8, 32)
    target = torch.randn_like(x)
    for module in (adapter, plain):
        (module(x) * target).sum().backward()
    for (name, param), (_, reference) in zip(
        adapter.spatial.named_parameters(), plain.spatial.named_parameters(), strict=True
    ):
        assert param.is_contiguous(memory_format=torch.channels_last), name
        assert reference.is_contiguous() and not reference.is_contiguous(memory_format=torch.channels_last)
        assert param.grad.stride() == param.stride(), name
        assert torch.equal(param, reference) and torch.equal(param.grad, reference.grad), name
    assert torch.equal(adapter(x), plain(x))


def test_channel_spatial_adapter_rejects_channels_first_input():
    with pytest.raises(ValueError, match="channels-last"):
        ChannelSpatialAdapter(16)(torch.randn(2, 16, 8, 8))


def test_fork_faithful_channel_spatial_adapter_reproduces_the_fork():
    torch.manual_seed(0)
    channels = 16
    adapter = ChannelSpatialAdapter(channels, fork_faithful=True)
    shapes = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    assert shapes == {  # the fork's key names and shapes (spec 8.1)
        "channel.0.weight": (channels // 4, channels),
        "channel.2.weight": (channels, channels // 4),
        "spatial.0.weight": (channels, channels, 3, 3),
        "spatial.2.weight": (channels, channels, 4, 4),
        "norm.weight": (channels,),
        "norm.bias": (channels,),
    }
    assert sum(v.numel() for v in adapter.state_dict().values()) == int(25.5 * channels**2) + 2 * channels
    x = torch.randn(2, 8, 8, channels)
    y = adapter(x)
    assert (y - x).norm() / x.norm() > 0.1  # not an identity, as in the fork
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 8, 8), atol=1e-5, rtol=0)  # LayerNorm output


def test_spatial_reduction_shrinks_the_spatial_branch():
    light = ChannelSpatialAdapter(32, spatial_reduction=8)
    assert light.spatial[0].weight.shape == (4, 32, 3, 3)
    assert light.spatial[2].weight.shape == (4, 32, 4, 4)
    x = torch.randn(1, 5, 5, 32)
    assert torch.equal(light(x), x)


def test_adapter_argument_validation():
    with pytest.raises(ValueError, match="reduction"):
        ChannelSpatialAdapter(16, reduction=0)
    with pytest.raises(ValueError, match="bottleneck"):
        VLAdapter(16, bottleneck=0)
    with pytest.raises(ValueError, match="scale"):
        AdaptFormer(16, scale=0.0)
    with pytest.raises(ValueError, match="activation"):
        VLAdapter(16, activation="tanh")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- VL-adapter and AdaptFormer


@pytest.mark.parametrize("shape", [(11, 2, 32), (2, 11, 32)])  # seq-first and batch-first
def test_vl_adapter_is_identity_or_zero_at_init(shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    assert torch.equal(VLAdapter(32, 8)(x), x)
    assert torch.equal(VLAdapter(32, 8, residual=False)(x), torch.zeros_like(x))


def test_vl_adapter_formula_and_default_bottleneck():
    torch.manual_seed(0)
    adapter = VLAdapter(32)
    assert adapter.down_proj.out_features == 16
    nn.init.normal_(adapter.up_proj.weight)
    x = torch.randn(5, 2, 32)
    expected = x + adapter.up_proj(F.gelu(adapter.down_proj(x)))
    torch.testing.assert_close(adapter(x), expected)


def test_vl_adapter_gradients_reach_both_projections():
    torch.manual_seed(0)
    adapter = VLAdapter(32, 8)
    x, target = torch.randn(5, 2, 32), torch.randn(5, 2, 32)
    (adapter(x) * target).sum().backward()
    assert adapter.up_proj.weight.grad.abs().sum() > 0
    torch.optim.SGD(adapter.parameters(), lr=0.1).step()
    adapter.zero_grad()
    (adapter(x) * target).sum().backward()
    assert adapter.down_proj.weight.grad.abs().sum() > 0


def test_adaptformer_is_zero_at_init_and_scales_its_branch():
    torch.manual_seed(0)
    head = AdaptFormer(32, 8, out_dim=24, scale=0.1)
    x = torch.randn(2, 7, 32)
    assert torch.equal(head(x), torch.zeros(2, 7, 24))
    assert not any("scale" in n for n, _ in head.named_parameters())
    nn.init.normal_(head.up_proj.weight)
    torch.testing.assert_close(head(x), 0.1 * head.up_proj(F.relu(head.down_proj(x))))


def test_adaptformer_learnable_scale_starts_at_scale_and_learns():
    torch.manual_seed(0)
    head = AdaptFormer(32, 8, scale=0.5, learnable_scale=True)
    assert isinstance(head.scale, nn.Parameter) and head.scale.shape == (1,)
    assert head.scale.item() == 0.5
    x = torch.randn(2, 7, 32)
    (head(x) * torch.randn(2, 7, 32)).sum().backward()
    assert head.up_proj.weight.grad.abs().sum() > 0


def test_fork_faithful_decoder_adapters_match_the_fork_sizes_and_are_not_identities():
    torch.manual_seed(0)
    dim = 64
    plain = VLAdapter(dim, residual=False, fork_faithful=True)
    head = AdaptFormer(dim, fork_faithful=True)
    assert set(plain.state_dict()) == {"down_proj.weight", "down_proj.bias", "up_proj.weight", "up_proj.bias"}
    assert set(head.state_dict()) == set(plain.state_dict()) | {
        "layer_norm_input.weight",
        "layer_norm_input.bias",
        "layer_norm_output.weight",
        "layer_norm_output.bias",
        "scale",
    }
    plain_size = 2 * dim * (dim // 2) + dim // 2 + dim
    assert sum(p.numel() for p in plain.parameters()) == plain_size
    assert sum(p.numel() for p in head.parameters()) == plain_size + 4 * dim + 1
    assert isinstance(plain.act, nn.ReLU) and plain.dropout.p == 0.1
    x = F.layer_norm(torch.randn(10, 2, dim), (dim,))
    plain.eval()
    assert plain(x).norm() / x.norm() > 0.3  # the fork's adapters perturb the model at init
    head.eval()
    rms = head(x).square().mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-3, rtol=0)


# ---------------------------------------------------------------------- LoRA (peft)


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)) for _ in range(2)
        )
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.stem(x).permute(0, 2, 3, 1)
        for block in self.blocks:
            y = y + block(y)
        return self.head(self.norm(y))


@pytest.fixture(scope="module")
def peft_module():
    return pytest.importorskip("peft")


@pytest.mark.slow  # importing peft alone takes about 10 s
def test_lora_wraps_only_the_named_layers_and_starts_as_identity(peft_module):
    torch.manual_seed(0)
    model = _Toy()
    x = torch.randn(2, 3, 5, 5)
    before = model(x)
    names = inject_lora(model, LoRASpec(targets=("blocks.*.0", "stem"), r=2, alpha=4))
    assert names == ["blocks.0.0", "blocks.1.0", "stem"]
    assert lora_module_names(model) == sorted(names)
    assert isinstance(model.blocks[0][2], nn.Linear) and isinstance(model.head, nn.Linear)  # untouched
    for name in names:
        layer = model.get_submodule(name)
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    assert lora_parameter_names(model) == {
        f"{n}.{ab}.default.weight" for n in names for ab in ("lora_A", "lora_B")
    }
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)


@pytest.mark.slow  # importing peft alone takes about 10 s
def test_lora_target_errors_name_the_pattern(peft_module):
    model = _Toy()
    with pytest.raises(ValueError, match=r"'blocks\.\*\.9'.*no module"):
        resolve_lora_targets(model, ["blocks.*.9"])
    with pytest.raises(ValueError, match=r"'norm'.*LayerNorm"):
        resolve_lora_targets(model, ["norm"])
    with pytest.raises(ValueError, match="language encoder"):
        LoRASpec(targets=("sem_seg_head.predictor.lang_encoder.*",))
    with pytest.raises(ValueError, match=r"LoRASpec\.r"):
        LoRASpec(targets=("head",), r=0)


@pytest.mark.slow  # importing peft alone takes about 10 s
def test_lora_save_and_load_use_peft_file_names(tmp_path, peft_module):
    torch.manual_seed(0)
    model = _Toy()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    inject_lora(model, LoRASpec(targets=("blocks.*.2",), r=2))
    with torch.no_grad():
        for name in lora_parameter_names(model):
            model.get_parameter(name).normal_()
    x = torch.randn(2, 3, 4, 4)
    expected = model(x)
    save_lora(model, tmp_path, base_model_name_or_path="xdecoder/SEEM")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "xdecoder/SEEM"

    fresh = _Toy()
    fresh.load_state_dict(base)
    assert load_lora(fresh, tmp_path) == ["blocks.0.2", "blocks.1.2"]
    torch.testing.assert_close(fresh(x), expected)
