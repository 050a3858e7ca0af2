"""ChannelsLastAdamW: torch's fused AdamW, stepping channels-last weights through their contiguous permutation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from seemadapt.adapters.modules import ChannelSpatialAdapter
from seemadapt.train.adamw import ChannelsLastAdamW


def _model() -> nn.Module:
    """Channels-last conv weights (3x3 and a 4x4 transposed one) beside a linear layer and a bias."""
    torch.manual_seed(0)
    adapter = ChannelSpatialAdapter(8, reduction=2, spatial_reduction=2)
    nn.init.normal_(adapter.spatial[2].weight)  # not the zero init: every weight gets a gradient
    return nn.Sequential(adapter, nn.Linear(8, 5))


def _steps(model: nn.Module, optimizer: torch.optim.Optimizer, count: int = 3) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(count):
        x = torch.randn(2, 7, 6, 8, generator=generator)
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()


@pytest.mark.parametrize("fused", [True, False])
def test_same_updates_state_and_layouts_as_torch_adamw(fused):
    model = _model()
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(
        p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs
    )
    theirs_model = copy.deepcopy(model)
    ours = ChannelsLastAdamW(model.parameters(), lr=0.01, weight_decay=0.05, fused=fused)
    theirs = torch.optim.AdamW(theirs_model.parameters(), lr=0.01, weight_decay=0.05, fused=fused)
    _steps(model, ours)
    _steps(theirs_model, theirs)
    for mine, expected in zip(model.parameters(), theirs_model.parameters()):
        assert torch.equal(mine, expected)
        assert (
            mine.shape == expected.shape and mine.stride() == expected.stride()
        )  # layouts as before the step
        assert mine.grad.stride() == mine.stride()
        for key, value in ours.state[mine].items():
            assert torch.equal(value, theirs.state[expected][key]), key
            assert value.stride() == theirs.state[expected][key].stride(), key
    assert str(ours.state_dict()) == str(theirs.state_dict())  # checkpoints alike


def test_the_fused_step_sees_contiguous_permutations(monkeypatch):
    model = _model()
    optimizer = ChannelsLastAdamW(model.parameters(), lr=0.01, fused=True)
    seen = []
    step = torch.optim.AdamW.step

    def spy(self, closure=None):
        seen.extend(
            (p.shape, p.is_contiguous(), p.grad.is_contiguous()) for p in self.param_groups[0]["params"]
        )
        return step(self, closure)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    _steps(model, optimizer, count=1)
    conv = model[0].spatial[0].weight
    assert (torch.Size([conv.shape[0], 3, 3, conv.shape[1]]), True, True) in seen  # [O, kH, kW, I]
    assert all(contiguous and grad_contiguous for _, contiguous, grad_contiguous in seen)


def test_a_failing_step_leaves_the_parameters_as_they_were(monkeypatch):
    model = _model()
    optimizer = ChannelsLastAdamW(model.parameters(), lr=0.01, fused=True)
    _steps(model, optimizer, count=1)
    before = [(p.shape, p.stride(), p.grad.stride(), p.detach().clone()) for p in model.parameters()]

    def broken(self, closure=None):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(torch.optim.AdamW, "step", broken)
    with pytest.raises(RuntimeError, match="kernel failed"):
        optimizer.step()
    for p, (shape, stride, grad_stride, value) in zip(model.parameters(), before):
        assert (p.shape, p.stride(), p.grad.stride()) == (shape, stride, grad_stride) and torch.equal(
            p, value
        )
    for state in optimizer.state.values():
        assert all(v.dim() != 4 or v.is_contiguous(memory_format=torch.channels_last) for v in state.values())


def test_step_hooks_run_once_outside_the_permutation():
    torch.optim.AdamW([nn.Parameter(torch.zeros(2))])  # torch hooks AdamW.step itself on first use
    model = _model()
    optimizer = ChannelsLastAdamW(model.parameters(), lr=0.01, fused=True)
    conv = model[0].spatial[0].weight
    seen = []
    optimizer.register_step_pre_hook(lambda *_: seen.append(("pre", conv.shape)))
    optimizer.register_step_post_hook(lambda *_: seen.append(("post", conv.shape)))
    _steps(model, optimizer, count=1)
    assert seen == [("pre", (4, 8, 3, 3)), ("post", (4, 8, 3, 3))]  # once each, in the model's own shape
