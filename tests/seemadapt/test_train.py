"""Training: config validation, parameter groups and schedule, targets, every strategy trains, resume, NaN guard,
overfitting to a high mIoU, and saved adapters that reload to identical predictions."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from seemadapt import heap
from seemadapt.adapters import (
    AdapterPlacement,
    adapter_report,
    adapter_state_dict,
    apply_adapters,
    get_strategy,
)
from seemadapt.detectron2_compat import BitMasks, Instances
from seemadapt.metrics import SemanticMetrics
from seemadapt.model import SEEM
from seemadapt.model.templates import with_background
from seemadapt.testing import make_contract_dataset
from seemadapt.train import (
    CriterionConfig,
    LRSchedule,
    NonFiniteLossError,
    SEEMCriterion,
    TrainConfig,
    Trainer,
    build_optimizer,
    build_targets,
    param_groups,
)
from seemadapt.train.checkpoints import STATE_FILE, find_checkpoint
from seemadapt.train.eval_hook import pick_metric
from seemadapt.train.optim import match_state_layout
from seemadapt.train.step import non_finite_outputs

STRATEGY_NAMES = [
    "frozen-backbone/adapter-head",
    "adapter-backbone/adapter-head",
    "frozen-backbone/full-head",
    "adapter-backbone/full-head",
]


@pytest.fixture(scope="module")
def data():
    return make_contract_dataset(2, size=(64, 64))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("seemadapt-cache")


def fast_config(tmp_path, cache, **overrides) -> TrainConfig:
    """Same two images every step (no augmentation), few loss points: a fast, low-noise run."""
    settings = dict(
        batch_size=2,
        image_size=64,
        num_workers=0,
        tracker=None,
        progress=False,
        min_scale=1.0,
        max_scale=1.0,
        flip=False,
        criterion={"num_points": 1024},
        schedule="constant",
        lr=1e-3,
        log_every=1,
        save_every=0,
        output_dir=str(tmp_path / "run"),
        cache_dir=str(cache),
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def tiny_with(placement) -> SEEM:
    model = SEEM.from_config("tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        apply_adapters(model, placement)
    return model


# ---------------------------------------------------------------------- config


def test_config_defaults_follow_the_recipe_without_the_fork_lr_multiplier():
    c = TrainConfig()
    assert (c.lr, c.weight_decay, c.clip, c.image_size) == (None, 0.05, 5.0, 256)
    # lr None = the placement's default: the SEEM recipe's 1e-4 when base weights train, 1e-3 for adapters only.
    assert c.with_default_lr(get_strategy("frozen-backbone/full-head")).lr == 1e-4
    assert c.with_default_lr(get_strategy("adapter-backbone/full-head")).lr == 1e-4
    assert c.with_default_lr(get_strategy("frozen-backbone/adapter-head")).lr == 1e-3
    assert c.with_default_lr(get_strategy("adapter-backbone/adapter-head")).lr == 1e-3
    assert TrainConfig(lr=5e-4).with_default_lr(get_strategy("frozen-backbone/adapter-head")).lr == 5e-4
    assert c.lr_multipliers == {} and c.tracker == "tensorboard" and c.mixed_precision == "auto"
    assert c.criterion == CriterionConfig()
    assert c.milestones == (0.88889, 0.96296)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"lr": 0}, "lr"),
        ({"weight_decay": -1}, "weight_decay"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"schedule": "linear"}, "schedule"),
        ({"schedule": "multistep", "milestones": (0.9, 0.5)}, "milestones"),
        ({"batch_size": 0}, "batch_size"),
        ({"grad_accum": 1.5}, "grad_accum"),
        ({"clip": -0.1}, "clip"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"tracker": "mlflow"}, "tracker"),
        ({"lr_multipliers": {"backbones": 0.1}}, "lr_multipliers"),
        ({"eval_every": -1}, "eval_every"),
        ({"image_size": 16}, "image_size"),
        ({"min_scale": 2.0, "max_scale": 1.0}, "min_scale"),
        ({"max_steps": 0}, "max_steps"),
        ({"criterion": {"num_points": 0}}, "num_points"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**overrides)


def test_config_round_trips_and_refuses_unknown_fields(tmp_path):
    c = TrainConfig(lr=3e-4, criterion={"num_points": 100}, lr_multipliers={"backbone adapters": 2.0})
    assert isinstance(c.criterion, CriterionConfig) and c.criterion.num_points == 100
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match=r"unknown fields \['lrr'\]"):
        TrainConfig.from_dict({"lrr": 1})
    with pytest.raises(ValueError, match="unknown fields"):
        c.replace(batchsize=3)
    path = tmp_path / "train.yaml"
    path.write_text("lr: 0.0002\nmax_steps: 7\ncriterion:\n  num_points: 64\n")
    loaded = TrainConfig.resolve(str(path), batch_size=3)
    assert (loaded.lr, loaded.max_steps, loaded.batch_size, loaded.criterion.num_points) == (2e-4, 7, 3, 64)


def test_total_steps_counts_samples_per_optimizer_step():
    c = TrainConfig(epochs=2, batch_size=2, grad_accum=2)
    assert c.total_steps(10) == 5  # ceil(2 * 10 / 4)
    assert c.total_steps(10, num_processes=2) == 3  # ceil(20 / 8)
    assert c.replace(max_steps=11).total_steps(10) == 11
    assert c.steps_per_epoch(10) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU default")
def test_mixed_precision_auto_follows_the_device(monkeypatch):
    from seemadapt.train import config as config_module

    monkeypatch.setattr(config_module, "_cpu_has_native_bf16", lambda: False)
    assert TrainConfig().resolved_mixed_precision() == "no"
    monkeypatch.setattr(config_module, "_cpu_has_native_bf16", lambda: True)
    assert TrainConfig().resolved_mixed_precision() == "bf16"
    assert TrainConfig(mixed_precision="bf16").resolved_mixed_precision() == "bf16"


# ---------------------------------------------------------------------- optimizer and schedule


def test_param_groups_cover_exactly_the_trainable_parameters_with_the_right_decay():
    model = tiny_with("adapter-backbone/full-head")
    report = adapter_report(model)
    groups = param_groups(model, TrainConfig(), report.group_of)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert decay[id(names["sem_seg_head.predictor.decoder_norm.weight"])] == 0.0  # norm
    assert decay[id(names["sem_seg_head.predictor.query_feat.weight"])] == 0.0  # nn.Embedding
    bias = next(p for n, p in names.items() if n.endswith(".bias") and p.requires_grad)
    weight = next(
        p for n, p in names.items() if n.endswith("proj.weight") and p.requires_grad and p.ndim == 2
    )
    assert decay[id(bias)] == 0.0 and decay[id(weight)] == 0.05
    assert build_optimizer(model, TrainConfig(), report.group_of).defaults["fused"] is True  # CPU tensors
    # Same learning rate everywhere by default: the backbone adapters are not starved (the fork's 0.1).
    assert {g["lr"] for g in groups} == {1e-4}
    assert any(g["name"].startswith("backbone adapters/") for g in groups)
    boosted = param_groups(model, TrainConfig(lr_multipliers={"backbone adapters": 10.0}), report.group_of)
    for group in boosted:
        expected = 1e-3 if group["name"].startswith("backbone adapters/") else 1e-4
        assert group["lr"] == pytest.approx(expected)


def test_match_state_layout_gives_optimizer_state_the_parameter_layout():
    """The fused AdamW walks memory flat: a state tensor in another layout than its parameter (a checkpoint from
    before the adapter convs became channels-last) must be re-laid before the step, values unchanged."""
    torch.manual_seed(0)
    grads = [torch.randn(6, 4, 3, 3) for _ in range(3)]
    old = torch.nn.Parameter(torch.randn(6, 4, 3, 3))
    old_optimizer = torch.optim.AdamW([old], lr=0.1, fused=True)
    old.grad = grads[0].clone()
    old_optimizer.step()
    new = torch.nn.Parameter(old.detach().clone().contiguous(memory_format=torch.channels_last))
    new_optimizer = torch.optim.AdamW([new], lr=0.1, fused=True)
    new_optimizer.load_state_dict(copy.deepcopy(old_optimizer.state_dict()))  # contiguous exp_avg(_sq)
    assert new_optimizer.state[new]["exp_avg"].is_contiguous()
    assert match_state_layout(new_optimizer) == 2 and match_state_layout(new_optimizer) == 0
    assert new_optimizer.state[new]["exp_avg"].stride() == new.stride()
    torch.testing.assert_close(new_optimizer.state[new]["exp_avg"], old_optimizer.state[old]["exp_avg"])
    for g in grads[1:]:
        for optimizer, p in ((old_optimizer, old), (new_optimizer, new)):
            p.grad = torch.empty_like(p).copy_(g)  # in the parameter's layout, as autograd gives it
            optimizer.step()
    assert torch.equal(new.detach(), old.detach())


def test_optimizer_needs_trainable_parameters():
    model = SEEM.from_config("tiny").requires_grad_(False)
    with pytest.raises(ValueError, match="apply_adapters"):
        build_optimizer(model, TrainConfig())


def test_schedules():
    cosine = LRSchedule(TrainConfig(schedule="cosine"), 100)
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)
    official = LRSchedule(
        TrainConfig(schedule="multistep"), 27
    )  # x0.1 at round(27 * 8/9) = 24, round(27 * 26/27)
    assert [official(s) for s in (0, 23, 24, 25, 26)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    warm = LRSchedule(TrainConfig(schedule="constant", warmup_steps=10, warmup_factor=0.001), 100)
    assert warm(0) == pytest.approx(0.001) and warm(5) == pytest.approx(0.5005) and warm(10) == 1.0


# ---------------------------------------------------------------------- targets and helpers


def _record(masks: torch.Tensor, labels: list[int], grounding_masks: torch.Tensor, texts: list[str]) -> dict:
    instances = Instances(tuple(masks.shape[-2:]))
    instances.gt_classes = torch.tensor(labels)
    instances.gt_masks = BitMasks(masks)
    mode = "text" if len(grounding_masks) else "class"
    return {
        "instances": instances,
        "groundings": {
            "masks": grounding_masks,
            "texts": texts,
            "mode": mode,
            "hash": list(range(len(texts))),
        },
        "file_name": "x.png",
    }


def test_build_targets_pads_masks_like_the_images_and_skips_empty_grounding():
    masks = torch.zeros(2, 50, 60, dtype=torch.bool)
    masks[0, :10, :10] = True
    masks[1, 40:, 50:] = True
    with_text = _record(masks, [1, 0], masks[:1], ["the thing"])
    without = _record(masks, [2, 2], torch.zeros(0, 50, 60, dtype=torch.bool), ["none"])
    outputs = {"padded_size": (64, 64), "grounding_class_embs": [torch.randn(1, 8), torch.randn(1, 8)]}
    targets = build_targets([with_text, without], outputs, torch.device("cpu"))
    assert targets[0]["masks"].shape == (2, 64, 64)
    assert targets[0]["masks"].dtype == torch.float32  # converted once, not at every matcher/criterion read
    assert torch.equal(targets[0]["masks"][:, :50, :60], masks.float())
    assert not targets[0]["masks"][:, 50:].any() and not targets[0]["masks"][:, :, 60:].any()
    assert targets[0]["labels"].tolist() == [1, 0]
    assert targets[0]["grounding_masks"].shape == (1, 64, 64)
    assert targets[1]["grounding_masks"] is None
    assert (
        "grounding_masks"
        not in build_targets([without], {"padded_size": (64, 64)}, "cpu", grounding=False)[0]
    )
    outputs["grounding_class_embs"][0] = torch.randn(3, 8)
    with pytest.raises(ValueError, match="grounding texts"):
        build_targets([with_text, without], outputs, torch.device("cpu"))


def test_metric_lookup_and_output_check():
    metrics = {"miou": 0.5, "iou/disc": 0.4, "pq": 0.3}
    assert pick_metric(metrics, "miou") == "miou"
    assert pick_metric({"semantic/mIoU": 0.5}, "miou") == "semantic/mIoU"
    assert pick_metric(metrics, "ap") is None
    good = {"pred_logits": torch.zeros(1, 2, 3), "pred_masks": torch.zeros(1, 2, 4, 4)}
    bad = {"pred_masks": torch.tensor([[[[math.nan]]]])}
    assert non_finite_outputs({**good, "aux_outputs": [good]}) == []
    assert non_finite_outputs({**good, "aux_outputs": [good, bad]}) == ["aux 1 pred_masks"]
    for value in (math.nan, math.inf, -math.inf):  # one bad entry inside larger tensors (vectorised and tail)
        for index in (0, 37, 1000):
            masks = torch.randn(2, 3, 13, 13)
            masks.view(-1)[index] = value
            texts = torch.randn(2, 3, 5, dtype=torch.bfloat16)
            texts.view(-1)[index % 30] = value
            layer = {"pred_masks": masks, "pred_gtexts": texts, "pred_logits": torch.zeros(2, 0, 3)}
            assert non_finite_outputs({**good, "aux_outputs": [layer]}) == [
                "aux 0 pred_masks",
                "aux 0 pred_gtexts",
            ]


# ---------------------------------------------------------------------- training runs


def _frozen_and_trained(model: SEEM) -> tuple[dict, dict]:
    reference = SEEM.from_config("tiny").state_dict()  # the seeded preset: the same base weights
    trained = set(adapter_state_dict(model))
    state = model.state_dict()
    frozen = {k: v for k, v in state.items() if k not in trained and k in reference}
    return {k: torch.equal(v, reference[k]) for k, v in frozen.items()}, {k: state[k] for k in trained}


@pytest.mark.parametrize(
    "placement",
    [
        *STRATEGY_NAMES,
        AdapterPlacement(backbone_adapters=True, backbone_stages=(2, 3), decoder_adapters=("ffn",)),
    ],
    ids=[*STRATEGY_NAMES, "custom"],
)
def test_every_strategy_trains_its_parameters_and_only_them(placement, data, cache, tmp_path):
    model = tiny_with(placement)
    before = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    run = Trainer(model, data, fast_config(tmp_path, cache, max_steps=6)).train()
    losses = [h["loss"] for h in run.history]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    unchanged, trained = _frozen_and_trained(run.model)
    assert all(unchanged.values()), [k for k, same in unchanged.items() if not same][:5]
    changed = [k for k, v in trained.items() if not torch.equal(v, before[k])]
    assert len(changed) > len(trained) // 2
    assert not run.model.language_encoder.training and not run.model.training


def test_optional_spatial_training_trains_the_visual_prompt_branch(data, cache, tmp_path):
    model = tiny_with("frozen-backbone/full-head")
    interactive = ("mask_sptial_embed", "spatial_embed", "spatial_featured", "pn_indicator")  # sic: "sptial"
    before = {k: v.clone() for k, v in model.state_dict().items() if any(n in k for n in interactive)}
    config = fast_config(
        tmp_path, cache, max_steps=3, spatial=True, spatial_max_candidate=2, spatial_max_iter=1
    )
    run = Trainer(model, data, config).train()
    assert all(math.isfinite(h["loss"]) for h in run.history)
    assert any(k.startswith("loss_spatial") for k in run.history[-1]), sorted(run.history[-1])
    after = run.model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    # The point-feature projections, the prompt indicator and the memory prompts are trained by the spatial losses.
    assert {
        "sem_seg_head.predictor.mask_sptial_embed.0",
        "sem_seg_head.predictor.pn_indicator.weight",
        "sem_seg_head.predictor.spatial_featured.weight",
    } <= set(changed), changed
    with pytest.raises(ValueError, match="spatial_max_candidate"):
        TrainConfig(spatial=True, spatial_max_candidate=0)


@pytest.mark.parametrize(
    ("strategy", "backbone_graph"),
    [("frozen-backbone/full-head", False), ("adapter-backbone/adapter-head", True)],
)
def test_frozen_parts_run_outside_autograd_and_prompts_come_from_the_cache(
    strategy, backbone_graph, data, cache, tmp_path
):
    model = tiny_with(strategy)
    seen: dict[str, list] = {"backbone": [], "pixel": [], "text": []}
    model.backbone.register_forward_hook(lambda m, i, o: seen["backbone"].append(o["res5"].requires_grad))
    model.pixel_decoder.register_forward_hook(lambda m, i, o: seen["pixel"].append(o[0].requires_grad))
    model.language_encoder.register_forward_hook(
        lambda m, i, o: seen["text"].append((m.training, o.sentence.requires_grad))
    )
    lang = model.language_encoder
    calls = []
    encode_ids = lang.encode_ids
    lang.encode_ids = lambda *args, **kwargs: calls.append(args[0].shape[0]) or encode_ids(*args, **kwargs)
    Trainer(model, data, fast_config(tmp_path, cache, max_steps=3)).train()
    # Without trainable backbone weights or adapters, backbone and pixel decoder build no autograd graph.
    assert seen["backbone"] == [backbone_graph] * 3 and seen["pixel"] == [backbone_graph] * 3
    # The text encoder runs in eval mode and without a graph (grounding texts, token level).
    assert seen["text"] == [(False, False)] * 3
    # Class prompts: every (class, template) pair encoded once, then drawn from the cache on every step.
    names = data.features["segments_info"].feature["category_id"].names
    texts = set(with_background(names))  # the data's "background" class is encoded as "plain background"
    assert calls == [len(texts) * 81]


def test_trainer_needs_a_placement(data, cache, tmp_path):
    with pytest.raises(ValueError, match="apply_adapters"):
        Trainer(SEEM.from_config("tiny"), data, fast_config(tmp_path, cache))


def test_gradient_accumulation_counts_optimizer_steps(data, cache, tmp_path):
    model = tiny_with("frozen-backbone/adapter-head")
    config = fast_config(tmp_path, cache, max_steps=3, batch_size=1, grad_accum=2, schedule="cosine")
    trainer = Trainer(model, data, config)
    run = trainer.train()
    assert [h["step"] for h in run.history] == [1, 2, 3]
    assert [h["lr"] for h in run.history] == pytest.approx(
        [1e-3 * LRSchedule(config, 3)(s) for s in (1, 2, 3)]
    )


def test_cpu_training_keeps_freed_memory_and_hands_it_back_at_the_end(data, cache, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda **_: calls.append("keep"))
    monkeypatch.setattr(heap, "release_freed_memory", lambda: calls.append("release"))
    trainer = Trainer(
        tiny_with("frozen-backbone/adapter-head"), data, fast_config(tmp_path, cache, max_steps=1)
    )
    losses = trainer._losses

    def counted(*args):
        calls.append("step")
        return losses(*args)

    trainer._losses = counted
    trainer.train()
    assert calls == ["keep", "step", "release"]


def _crash_at(monkeypatch, step_index: int) -> None:
    original = Trainer._losses

    def losses(self, accelerator, prepared, criterion, batch, step, micro):
        if step == step_index:
            raise KeyboardInterrupt("simulated kill")
        return original(self, accelerator, prepared, criterion, batch, step, micro)

    monkeypatch.setattr(Trainer, "_losses", losses)


def test_resume_repeats_the_uninterrupted_run(data, cache, tmp_path, monkeypatch):
    placement = "adapter-backbone/full-head"
    settings = dict(max_steps=6, save_every=3, schedule="cosine", warmup_steps=2)
    full = Trainer(tiny_with(placement), data, fast_config(tmp_path / "a", cache, **settings)).train()

    config = fast_config(tmp_path / "b", cache, **settings)
    with monkeypatch.context() as patch:
        _crash_at(patch, 4)
        with pytest.raises(KeyboardInterrupt):
            Trainer(tiny_with(placement), data, config).train()
    checkpoint = find_checkpoint(config.output_dir, "latest")
    assert checkpoint is not None and checkpoint.name == "step_00000003"
    assert json.loads((checkpoint / STATE_FILE).read_text())["step"] == 3

    resumed_trainer = Trainer(tiny_with(placement), data, config.replace(resume_from="latest"))
    resumed = resumed_trainer.train()
    assert resumed_trainer.state.step == 6
    assert [h["step"] for h in resumed.history] == [h["step"] for h in full.history]
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-5)
    assert [h["lr"] for h in resumed.history] == pytest.approx([h["lr"] for h in full.history])
    final, expected = adapter_state_dict(resumed.model), adapter_state_dict(full.model)
    assert set(final) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(final[key], value, rtol=1e-5, atol=1e-6)

    # A checkpoint does not load into another placement: the error says so before anything trains.
    other = Trainer(
        tiny_with("frozen-backbone/adapter-head"), data, config.replace(resume_from=str(checkpoint))
    )
    with pytest.raises(ValueError, match="does not match this model and placement"):
        other.train()


def test_resume_from_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a complete seemadapt checkpoint"):
        find_checkpoint(tmp_path, str(tmp_path))
    assert find_checkpoint(tmp_path, "latest") is None


def test_non_finite_loss_stops_with_the_terms_and_the_step(data, cache, tmp_path, monkeypatch):
    original = SEEMCriterion.forward
    calls = {"n": 0}

    def poisoned(self, outputs, targets, **kwargs):
        losses = original(self, outputs, targets, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            losses["loss_mask_bce_0"] = losses["loss_mask_bce_0"] * math.nan
        return losses

    monkeypatch.setattr(SEEMCriterion, "forward", poisoned)
    trainer = Trainer(tiny_with("frozen-backbone/full-head"), data, fast_config(tmp_path, cache, max_steps=4))
    with pytest.raises(NonFiniteLossError, match=r"step 2 .*loss_mask_bce_0=nan") as info:
        trainer.train()
    assert "loss_mask_dice_0" not in str(info.value)
    assert trainer.state.step == 1


@pytest.mark.slow
def test_overfits_two_images_to_a_high_miou(data, cache, tmp_path):
    """Measured, not assumed: predictions of the trained model scored against the ground-truth semantic maps."""
    names = data.features["segments_info"].feature["category_id"].names
    model = tiny_with("adapter-backbone/full-head")

    def miou() -> float:
        metrics = SemanticMetrics(len(names), names)
        for row in data:
            metrics.update(
                model.predict(row["image"], names, "semantic")["labels"], np.asarray(row["semantic"])
            )
        return metrics.compute().miou

    start = miou()
    run = Trainer(model, data, fast_config(tmp_path, cache, max_steps=60, lr=2e-3, log_every=10)).train()
    assert run.model is model
    final = miou()
    assert final >= 0.8 > start, (start, final)


def test_saved_adapters_reload_into_a_fresh_model_with_identical_predictions(data, cache, tmp_path):
    run = Trainer(
        tiny_with("adapter-backbone/adapter-head"), data, fast_config(tmp_path, cache, max_steps=2)
    ).train()
    folder = run.save(tmp_path / "adapters")
    fresh = SEEM.from_config("tiny")
    try:
        from seemadapt.hub import load_adapters
    except (
        ImportError
    ):  # without the hub module the folder holds adapter_model.safetensors + adapter_config.json
        from safetensors.torch import load_file

        from seemadapt.adapters import load_adapter_state_dict

        config = json.loads((folder / "adapter_config.json").read_text())
        load_adapter_state_dict(
            fresh,
            load_file(str(folder / "adapter_model.safetensors")),
            AdapterPlacement.from_dict(config["placement"]),
        )
    else:
        load_adapters(fresh, folder)
    names = run.classes
    images = [row["image"] for row in data]
    expected = run.model.predict(images, names, "semantic")
    got = fresh.predict(images, names, "semantic")
    for a, b in zip(expected, got):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["sem_seg"], b["sem_seg"])
    # The trained adapters matter: a model without them predicts something else.
    base = SEEM.from_config("tiny").predict(images, names, "semantic")
    assert any(not torch.allclose(a["sem_seg"], b["sem_seg"]) for a, b in zip(expected, base))
