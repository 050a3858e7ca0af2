"""Adapter placement on the tiny SEEM: unchanged outputs at init, exact trainable sets per strategy, the parameter
table, errors, freezing behaviour (autograd and modes) and saving/loading adapters apart from the base weights."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch

from seemadapt.adapters import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    AdapterPlacement,
    ChannelSpatialAdapter,
    LoRASpec,
    adapter_report,
    adapter_state_dict,
    apply_adapters,
    frozen_forward_context,
    get_strategy,
    load_adapter_state_dict,
    resolve_placement,
    set_train_mode,
)
from seemadapt.model.seem import SEEM

DATA = Path(__file__).resolve().parent / "data"  # copies of shared/research/seem_focal{t,l}_v1_keys.txt
PRED = r"sem_seg_head\.predictor\."
LANG = "sem_seg_head.predictor.lang_encoder."

BACKBONE_ADAPTER = r"backbone\.layers\.\d\.blocks\.\d+\.adapter\..+"
DECODER_ADAPTER = PRED + r"(cross_attention|self_attention|ffn)_adapters\.\d+\..+"
HEAD_ADAPTER = PRED + r"mask_embed_adapters\.\d+\..+"
DECODER_NORM = (
    PRED + r"(transformer_(self_attention|cross_attention|ffn)_layers\.\d+\.norm|decoder_norm)\.(weight|bias)"
)
FULL_HEAD = PRED + r"(?!lang_encoder\.).+"

EXPECTED_TRAINABLE = {
    "frozen-backbone/adapter-head": (DECODER_ADAPTER, HEAD_ADAPTER, DECODER_NORM),
    "adapter-backbone/adapter-head": (BACKBONE_ADAPTER, DECODER_ADAPTER, HEAD_ADAPTER, DECODER_NORM),
    "frozen-backbone/full-head": (FULL_HEAD,),
    "adapter-backbone/full-head": (BACKBONE_ADAPTER, FULL_HEAD),
}


@pytest.fixture(scope="module")
def base() -> SEEM:
    return SEEM.from_config("tiny").eval()


@pytest.fixture
def model(base) -> SEEM:
    return copy.deepcopy(base)


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    # 72x56 gives odd feature sizes at strides 16 and 32 (5x4 -> 3x2 after 9x7): the backbone adapters must cope.
    images = torch.randn(2, 3, 72, 56, generator=generator)
    class_embeddings = torch.randn(6, 64, generator=generator)
    return images, class_embeddings


def _outputs(model, inputs, grad: bool = False) -> list[torch.Tensor]:
    images, class_embeddings = inputs
    with torch.set_grad_enabled(grad):
        features = model.backbone(images)
        mask_features, multi_scale = model.sem_seg_head.pixel_decoder(features)
        out = model.sem_seg_head.predictor(multi_scale, mask_features, class_embeddings)
    return [out["pred_masks"], out["pred_logits"], *(aux["pred_masks"] for aux in out["aux_outputs"])]


def _all_frozen(model):
    """PyTorch picks different (equally exact) matmul kernels depending on requires_grad, which changes float
    rounding: compare models with the same flags to test bitwise equality."""
    return copy.deepcopy(model).requires_grad_(False).eval()


EVERYTHING = AdapterPlacement(
    backbone_adapters=True,
    decoder_adapters=("cross_attention", "self_attention", "ffn"),
    head_adapters=True,
    head_learnable_scale=True,
    train_norms=True,
)


# ---------------------------------------------------------------------- identity at init


@pytest.mark.parametrize("placement", [*STRATEGIES, EVERYTHING], ids=[*STRATEGIES, "everything"])
def test_injection_leaves_the_outputs_unchanged(base, model, inputs, placement):
    reference = _outputs(_all_frozen(base), inputs)
    apply_adapters(model, placement)
    model.eval()
    for ours, ref in zip(_outputs(_all_frozen(model), inputs), reference):
        assert torch.equal(ours, ref)
    for ours, ref in zip(_outputs(model, inputs), reference):  # with the real requires_grad flags
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_fork_faithful_adapters_change_the_outputs(base, model, inputs):
    reference = _outputs(_all_frozen(base), inputs)
    apply_adapters(model, get_strategy("adapter-backbone/adapter-head", fork_faithful=True))
    changed = _outputs(_all_frozen(model), inputs)
    assert (changed[0] - reference[0]).abs().max() > 1e-3


# ---------------------------------------------------------------------- trainable sets and the table


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_each_strategy_trains_exactly_its_intended_set(model, strategy):
    report = apply_adapters(model, strategy)
    names = [n for n, _ in model.named_parameters()]
    patterns = [re.compile(p) for p in EXPECTED_TRAINABLE[strategy]]
    expected = {n for n in names if any(p.fullmatch(n) for p in patterns)}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected
    assert set(report.trainable) == trainable
    for pattern in patterns:  # every part of the strategy is really there
        assert any(pattern.fullmatch(n) for n in trainable), pattern.pattern
    assert not any(n.startswith((LANG, "sem_seg_head.pixel_decoder.")) for n in trainable)
    if "adapter-backbone" in strategy:
        assert len(report.trainable_by_group()["backbone adapters"]) == 4 * 4  # 4 blocks x 4 weights
        assert not any(n.startswith("backbone.") and ".adapter." not in n for n in trainable)
    if "adapter-head" in strategy:
        assert not model.get_parameter(
            "sem_seg_head.predictor.transformer_ffn_layers.0.linear1.weight"
        ).requires_grad
        assert not model.get_parameter("sem_seg_head.predictor.mask_embed.layers.0.weight").requires_grad
        assert not model.get_parameter("sem_seg_head.predictor.class_embed").requires_grad


def test_default_strategy_is_adapter_backbone_full_head():
    assert DEFAULT_STRATEGY == "adapter-backbone/full-head"
    assert resolve_placement(None) == get_strategy("adapter-backbone/full-head")


def test_table_counts_every_group_from_the_model(model):
    report = apply_adapters(
        model, get_strategy("adapter-backbone/adapter-head", train_full=("backbone.norm3",))
    )
    params = dict(model.named_parameters())

    def count(selector, trainable_only=False):
        return sum(
            p.numel() for n, p in params.items() if selector(n) and (p.requires_grad or not trainable_only)
        )

    def is_backbone_adapter(n):
        return n.startswith("backbone.") and ".adapter." in n

    def is_decoder_adapter(n):
        return re.fullmatch(DECODER_ADAPTER, n) is not None

    def is_head_adapter(n):
        return re.fullmatch(HEAD_ADAPTER, n) is not None

    selectors = {
        "backbone": lambda n: n.startswith("backbone.") and not is_backbone_adapter(n),
        "backbone adapters": is_backbone_adapter,
        "pixel decoder": lambda n: n.startswith("sem_seg_head.pixel_decoder."),
        "decoder": lambda n: (
            n.startswith("sem_seg_head.predictor.")
            and not n.startswith(LANG)
            and not is_decoder_adapter(n)
            and not is_head_adapter(n)
        ),
        "decoder adapters": is_decoder_adapter,
        "head adapters": is_head_adapter,
        "language encoder": lambda n: n.startswith(LANG),
    }
    for group, selector in selectors.items():
        assert report.groups[group].total == count(selector), group
        assert report.groups[group].trainable == count(selector, trainable_only=True), group
    assert report.groups["backbone"].trainable == 2 * 128  # norm3 weight and bias, channels 16 * 8
    assert report.groups["language encoder"].trainable == 0
    assert report.num_trainable == sum(p.numel() for p in params.values() if p.requires_grad)
    assert report.num_parameters == sum(p.numel() for p in params.values())

    table = report.table()
    lines = table.splitlines()
    for group in selectors:
        row = next(line for line in lines if line.startswith(group + " "))
        assert f"{report.groups[group].total:,}" in row and f"{report.groups[group].trainable:,}" in row
    assert lines[-1].startswith("total") and f"{report.num_trainable:,}" in lines[-1]
    assert str(report) == table
    assert adapter_report(model) is report


def test_fork_faithful_sizes_match_the_fork_on_the_full_size_models():
    """Spec 8.1/8.2: the fork's backbone adapters add 400,489,728 parameters to Focal-L, its decoder adapters
    9,748,234 (27 plain + 10 head adapters at width 512)."""
    model = SEEM.from_config("focall", device="meta")
    report = apply_adapters(model, get_strategy("adapter-backbone/adapter-head", fork_faithful=True))
    assert report.groups["backbone adapters"].total == 400_489_728
    assert report.groups["decoder adapters"].total + report.groups["head adapters"].total == 9_748_234
    assert report.groups["backbone"].total == 205_746_936  # the base is untouched


# ---------------------------------------------------------------------- errors and validation


def test_patterns_that_match_nothing_are_errors_naming_the_pattern(model):
    with pytest.raises(ValueError, match=r"'sem_seg_head\.predicter'"):
        apply_adapters(copy.deepcopy(model), AdapterPlacement(train_full=("sem_seg_head.predicter",)))
    with pytest.raises(ValueError, match=r"'layers\.7\.\*'"):
        apply_adapters(
            copy.deepcopy(model), AdapterPlacement(backbone_adapters=True, backbone_blocks=("layers.7.*",))
        )
    with pytest.raises(ValueError, match="no backbone block"):
        apply_adapters(
            copy.deepcopy(model),
            AdapterPlacement(backbone_adapters=True, backbone_stages=(3,), backbone_blocks=("layers.0.*",)),
        )


@pytest.mark.parametrize(
    "pattern", ["sem_seg_head.predictor.lang_encoder", "sem_seg_head.predictor.lang_encoder.lang_proj"]
)
def test_naming_the_text_encoder_is_refused_at_construction(pattern):
    with pytest.raises(ValueError, match="language \\(text\\) encoder"):
        AdapterPlacement(train_full=(pattern,))


@pytest.mark.parametrize("pattern", ["*.lang_proj", "*logit_scale", "*.resblocks.*"])
def test_patterns_that_reach_only_the_text_encoder_are_refused(model, pattern):
    with pytest.raises(ValueError, match="always stays frozen"):
        apply_adapters(model, AdapterPlacement(train_full=(pattern,)))


def test_broad_patterns_skip_the_text_encoder(model):
    apply_adapters(model, AdapterPlacement(train_full=("sem_seg_head.predictor.*",)))
    assert not any(p.requires_grad for p in model.sem_seg_head.predictor.lang_encoder.parameters())
    assert model.sem_seg_head.predictor.class_embed.requires_grad


def test_placement_validation_names_the_field():
    cases = [
        ({"backbone_adapters": True, "backbone_reduction": 0}, "backbone_reduction"),
        ({"backbone_adapters": True, "backbone_stages": (4,)}, "backbone_stages"),
        ({"decoder_adapters": ("mlp",)}, "decoder_adapters"),
        ({"decoder_adapters": ("ffn", "ffn")}, "decoder_adapters"),
        ({"head_adapters": True, "head_scale": float("nan")}, "head_scale"),
        ({"backbone_reduction": 8}, "backbone_adapters is off"),
        ({"head_bottleneck": 8}, "head_adapters is off"),
        ({"train_full": ("backbone",), "fork_faithful": True}, "fork_faithful"),
        ({"train_full": ("",)}, "train_full"),
        ({"train_norms": "yes"}, "train_norms"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            AdapterPlacement(**kwargs)
    with pytest.raises(ValueError, match="Unknown adapter strategy"):
        get_strategy("adapter-everything")


def test_placement_that_trains_nothing_or_twice_is_refused(model):
    with pytest.raises(ValueError, match="trains nothing"):
        apply_adapters(copy.deepcopy(model), AdapterPlacement())
    apply_adapters(model, "frozen-backbone/full-head")
    with pytest.raises(ValueError, match="already has adapters"):
        apply_adapters(model, "frozen-backbone/full-head")


def test_a_failed_placement_leaves_the_model_untouched(model):
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match=r"'sem_seg_head\.nothing'"):
        apply_adapters(
            model, get_strategy("adapter-backbone/full-head", train_full=("sem_seg_head.nothing",))
        )
    del model.sem_seg_head.predictor.config  # the decoder injection fails after the backbone adapters went in
    with pytest.raises(TypeError, match="config"):
        apply_adapters(model, "adapter-backbone/adapter-head")
    assert set(model.state_dict()) == keys
    assert all(block.adapter is None for _, block, _ in model.backbone.blocks())


def test_placement_serialises_to_json_and_back():
    placement = get_strategy("adapter-backbone/adapter-head", backbone_stages=(2, 3), decoder_bottleneck=16)
    data = json.loads(json.dumps(placement.to_dict()))
    assert AdapterPlacement.from_dict(data) == placement
    assert resolve_placement(data) == placement
    with pytest.raises(ValueError, match="unknown fields"):
        AdapterPlacement.from_dict({**data, "adapters_everywhere": True})


# ---------------------------------------------------------------------- training behaviour


def test_backbone_adapters_really_train_and_frozen_weights_do_not_move(model, inputs):
    apply_adapters(model, "adapter-backbone/full-head")
    set_train_mode(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    outputs = _outputs(model, inputs, grad=True)
    sum(o.square().mean() for o in outputs).backward()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, name  # no gradient is even computed for frozen weights
    adapter = model.backbone.layers[0].blocks[0].adapter
    assert adapter.spatial[2].weight.grad.abs().sum() > 0  # gradients cross the frozen pixel decoder
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(".adapter." in n for n in moved)
    assert any(n.startswith("sem_seg_head.predictor.") for n in moved)
    assert all(
        ".adapter." in n or (n.startswith("sem_seg_head.predictor.") and not n.startswith(LANG))
        for n in moved
    )


def test_frozen_backbone_runs_without_stochastic_depth_but_adapters_follow_train(model):
    apply_adapters(model, "adapter-backbone/adapter-head")
    set_train_mode(model)
    block = model.backbone.layers[3].blocks[0]
    assert block.drop_path.drop_prob > 0
    assert not block.drop_path.training
    assert block.adapter.training
    model.eval()
    assert not block.adapter.training


def test_frozen_drop_path_keeps_the_official_stochastic_depth(model):
    apply_adapters(model, get_strategy("adapter-backbone/adapter-head", frozen_drop_path=True))
    set_train_mode(model)
    assert model.backbone.layers[3].blocks[0].drop_path.training


def test_set_train_mode_puts_fully_frozen_parts_in_eval(model):
    apply_adapters(model, "frozen-backbone/adapter-head")
    set_train_mode(model)
    predictor = model.sem_seg_head.predictor
    assert model.training and predictor.training
    assert not model.sem_seg_head.pixel_decoder.training
    assert not predictor.lang_encoder.training
    assert not predictor.transformer_ffn_layers[0].linear1.training  # frozen base layer
    assert predictor.ffn_adapters[0].training and predictor.transformer_ffn_layers[0].norm.training
    set_train_mode(model, False)
    assert not any(m.training for m in model.modules())


def test_frozen_forward_context_disables_grad_only_when_everything_upstream_is_frozen(model, inputs):
    frozen = copy.deepcopy(model)
    apply_adapters(frozen, "frozen-backbone/full-head")
    with frozen_forward_context(frozen.backbone):
        assert not torch.is_grad_enabled()
        assert not frozen.backbone(inputs[0])["res5"].requires_grad
    apply_adapters(model, "adapter-backbone/full-head")
    with frozen_forward_context(model.backbone, model.sem_seg_head.pixel_decoder):
        assert torch.is_grad_enabled()
        features = model.backbone(inputs[0])
        assert model.sem_seg_head.pixel_decoder(features)[0].requires_grad


# ---------------------------------------------------------------------- saving and loading adapters


@pytest.mark.parametrize("strategy", ["adapter-backbone/adapter-head", "adapter-backbone/full-head"])
def test_adapter_state_dict_round_trip(base, model, inputs, strategy):
    report = apply_adapters(model, strategy)
    with torch.no_grad():
        for name in report.trainable:
            model.get_parameter(name).normal_(std=0.05)
    state = adapter_state_dict(model)
    assert set(state) == set(report.trainable)  # the adapters hold no buffers: exactly the trained weights
    assert not any(k.startswith(("sem_seg_head.pixel_decoder.", LANG)) for k in state)

    fresh = copy.deepcopy(base)
    load_adapter_state_dict(fresh, {k: v.clone() for k, v in state.items()}, strategy)
    for ours, ref in zip(_outputs(_all_frozen(fresh), inputs), _outputs(_all_frozen(model), inputs)):
        assert torch.equal(ours, ref)

    with pytest.raises(ValueError, match="1 missing"):
        load_adapter_state_dict(copy.deepcopy(base), dict(list(state.items())[1:]), strategy)
    with pytest.raises(ValueError, match="1 unexpected"):
        load_adapter_state_dict(
            copy.deepcopy(base), {**state, "backbone.norm0.weight": torch.ones(16)}, strategy
        )
    with pytest.raises(ValueError, match="different placement"):
        load_adapter_state_dict(fresh, state, "frozen-backbone/full-head")
    with pytest.raises(ValueError, match="pass the placement"):
        load_adapter_state_dict(copy.deepcopy(base), state)


def _official_keys(filename: str) -> set[str]:
    lines = (DATA / filename).read_text().splitlines()
    return {line.split(" ", 1)[0] for line in lines if line.strip() and not line.startswith("#")}


def test_adapter_keys_never_collide_with_official_checkpoint_keys():
    official = _official_keys("seem_focalt_v1_keys.txt")
    assert (
        "sem_seg_head.pixel_decoder.adapter_1.weight" in official
    )  # why adapters are found by type, not name
    model = SEEM.from_config("focalt", device="meta")
    apply_adapters(model, EVERYTHING)
    adapter_keys = {
        k
        for k in model.state_dict()
        if re.fullmatch("|".join((BACKBONE_ADAPTER, DECODER_ADAPTER, HEAD_ADAPTER)), k)
    }
    # 12 Focal-T blocks x 4 weights, 27 VL-adapters x (2 weights + 2 biases), 10 head adapters x (4 + scale)
    assert len(adapter_keys) == 12 * 4 + 27 * 4 + 10 * 5
    assert adapter_keys.isdisjoint(official)
    assert (set(model.state_dict()) - adapter_keys) <= official | {"criterion.empty_weight"}
    blocks = [m for m in model.modules() if isinstance(m, ChannelSpatialAdapter)]
    assert len(blocks) == 12  # Focal-T depths 2 + 2 + 6 + 2


# ---------------------------------------------------------------------- LoRA through a placement


@pytest.mark.slow  # importing peft alone takes about 10 s
def test_lora_placement_on_seem(base, model, inputs):
    pytest.importorskip("peft")
    placement = AdapterPlacement(lora=LoRASpec(targets=("backbone.layers.*.blocks.*.mlp.fc?",), r=4, alpha=8))
    report = apply_adapters(model, placement)
    assert len(report.injected) == 8  # fc1 and fc2 in 4 blocks
    trainable = set(report.trainable)
    assert trainable and all(
        re.fullmatch(r"backbone\..+\.mlp\.fc[12]\.lora_[AB]\.default\.weight", n) for n in trainable
    )
    assert report.groups["LoRA"].trainable == report.num_trainable
    for ours, ref in zip(_outputs(model.eval(), inputs), _outputs(base, inputs)):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert set(adapter_state_dict(model)) == trainable


# ---------------------------------------------------------------------- with the real training forward


def test_training_forward_updates_only_the_selected_weights(model):
    apply_adapters(model, DEFAULT_STRATEGY)
    set_train_mode(model)
    images = [
        torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
        torch.randint(0, 255, (3, 48, 40), dtype=torch.uint8),
    ]
    out = model.forward_train(images, ["mold", "stain"])
    (out["pred_masks"].square().mean() + out["pred_logits"].square().mean()).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad <= set(adapter_report(model).trainable)
    assert any(".adapter." in n for n in with_grad)
