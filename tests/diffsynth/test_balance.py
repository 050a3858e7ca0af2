"""Generation plans: per-class targets and yields, metrics -> plan, and generate(plan=...) following it."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from diffsynth import (
    GenerationPlan,
    generate,
    health_report,
    plan_for_targets,
    plan_from_metrics,
    settings_of,
)
from diffsynth.balance import VARIETY_TEMPLATES, YieldTracker, estimate_yields, plan_samples
from diffsynth.categories import resolve_categories
from diffsynth.loop_plan import per_class_iou

FAST = {"num_inference_steps": 2, "progress": False}
CATEGORIES = resolve_categories(["mold", "stain", "pipe", "wall"])


# ---------------------------------------------------------------------------------------------- the plan
def test_plan_validates_and_scales():
    plan = GenerationPlan({"mold": 6, "stain": 3, "pipe": 1})
    assert plan.num_images == 10 and plan.weights["mold"] == pytest.approx(0.6)
    half = plan.scaled(5)
    assert half.num_images == 5 and half.images == {"mold": 3, "stain": 2, "pipe": 0}
    assert GenerationPlan.from_dict(plan.to_dict()) == plan
    with pytest.raises(ValueError, match=r"images\['mold'\]"):
        GenerationPlan({"mold": -1})
    with pytest.raises(ValueError, match="no image at all"):
        GenerationPlan({"mold": 0})
    with pytest.raises(ValueError, match="has no entry in images"):
        GenerationPlan({"mold": 1}, templates={"pipe": ["a {classes}"]})
    with pytest.raises(ValueError, match=r"must contain '\{classes\}'"):
        GenerationPlan({"mold": 1}, templates={"mold": ["a photo"]})
    with pytest.raises(ValueError, match="unknown keys"):
        GenerationPlan.from_dict({"images": {"mold": 1}, "weights": {}})


def test_schedule_is_exact_and_every_prefix_keeps_the_proportions():
    plan = GenerationPlan({"mold": 6, "stain": 3, "pipe": 1})
    schedule = plan.schedule()
    assert Counter(schedule) == Counter(plan.images)
    for n in range(1, len(schedule) + 1):
        counts = Counter(schedule[:n])
        for name, share in plan.weights.items():
            assert abs(counts[name] - share * n) < 1.0 + 1e-9


def test_plan_samples_follow_the_plan_and_stay_per_index():
    plan = GenerationPlan(
        {"mold": 2, "stain": 6, "pipe": 0},
        templates={"stain": ["a grainy photo of {classes}"]},
        scenes={"stain": ["in a basement"]},
    )
    plans = plan_samples(plan, CATEGORIES, 16, seed=3, context=["wall"])
    primary = Counter(p.classes[0] for p in plans)
    assert primary == {"mold": 4, "stain": 12}
    assert all(p.classes[-1] == "wall" and p.prompt.endswith(", with wall") for p in plans)
    stain = [p.prompt for p in plans if p.classes[0] == "stain"]
    assert any("grainy" in p for p in stain) and any("in a basement" in p for p in stain)
    assert not any(
        "grainy" in p or "basement" in p for p in (p.prompt for p in plans if p.classes[0] == "mold")
    )
    again = plan_samples(plan, CATEGORIES, 16, seed=3, context=["wall"])
    assert again == plans
    two = plan_samples(plan, CATEGORIES, 8, seed=3, classes_per_image=2)
    assert all(len(set(p.classes)) == 2 for p in two)


def test_plan_samples_reject_what_cannot_be_drawn():
    with pytest.raises(ValueError, match="not target classes"):
        plan_samples(GenerationPlan({"cat": 1}), CATEGORIES, 2)
    with pytest.raises(ValueError, match="not target classes"):
        plan_samples(GenerationPlan({"wall": 1}), CATEGORIES, 2, context=["wall"])
    with pytest.raises(ValueError, match="must not name a class"):
        plan_samples(GenerationPlan({"mold": 1}, scenes={"mold": ["behind a pipe"]}), CATEGORIES, 2)


# ---------------------------------------------------------------------------------------------- targets
def test_plan_for_targets_sizes_by_yield():
    # mold yields 100 px per prompted image, stain 400: reaching 1000 px each needs 10 and 3 images.
    plan = plan_for_targets({"mold": 1000, "stain": 1000}, {"mold": 100.0, "stain": 400.0})
    assert plan.images == {"mold": 10, "stain": 3}
    assert plan.notes["needed_images"] == {"mold": 10, "stain": 3} and plan.notes["unit"] == "pixels"
    # what is already there is subtracted; a budget keeps the proportions of the need
    plan = plan_for_targets(
        {"mold": 1000, "stain": 1000}, {"mold": 100.0, "stain": 400.0}, have={"mold": 500}
    )
    assert plan.images == {"mold": 5, "stain": 3}
    budget = plan_for_targets({"mold": 1000, "stain": 1000}, {"mold": 100.0, "stain": 400.0}, num_images=26)
    assert budget.images == {"mold": 20, "stain": 6}
    capped = plan_for_targets({"mold": 1000, "stain": 1000}, {"mold": 100.0, "stain": 400.0}, max_images=4)
    assert capped.num_images == 4 and capped.notes["capped"]
    # a class never seen gets the mean yield of the others, and is reported
    unknown = plan_for_targets({"mold": 1000, "pipe": 500}, {"mold": 100.0, "pipe": None})
    assert unknown.images == {"mold": 10, "pipe": 5} and unknown.notes["assumed_yield"] == ["pipe"]
    with pytest.raises(ValueError, match="already met"):
        plan_for_targets({"mold": 10}, {"mold": 1.0}, have={"mold": 20})
    with pytest.raises(ValueError, match="unit"):
        plan_for_targets({"mold": 10}, {"mold": 1.0}, unit="images")


@pytest.fixture(scope="module")
def pipe():
    from diffsynth.testing import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture(scope="module")
def pilot(pipe):
    return generate(["cat", "dog"], num_images=4, model=pipe, **FAST)


def test_yields_from_a_health_report_and_a_running_tracker(pilot):
    report = health_report(pilot)
    yields = estimate_yields(pilot, "pixels")
    for c in report["classes"]:
        if c["prompted_images"]:
            assert yields[c["name"]] == pytest.approx(c["pixels"] / c["prompted_images"])
        else:
            assert yields[c["name"]] is None
    tracker = YieldTracker("instances", prior_images=0.0).update(pilot).update(report)
    assert tracker.images == 8
    by_name = {c["name"]: c for c in report["classes"]}
    assert tracker.totals()["cat"] == 2 * by_name["cat"]["instances"]
    assert tracker.yields()["cat"] == pytest.approx(
        by_name["cat"]["instances"] / by_name["cat"]["prompted_images"]
    )
    plan = plan_for_targets({"cat": 50, "dog": 50}, pilot, unit="instances", have=pilot)
    assert plan.notes["have"]["cat"] == by_name["cat"]["instances"]


# ---------------------------------------------------------------------------------------------- metrics
def test_plan_from_metrics_shifts_the_budget_to_the_weakest_classes():
    metrics = {"mold": 0.1, "stain": 0.5, "pipe": 0.8, "background": 0.9}
    plan = plan_from_metrics(metrics, 100)
    assert set(plan.images) == {"mold", "stain", "pipe"} and plan.num_images == 100
    assert plan.images["mold"] > plan.images["stain"] > plan.images["pipe"] > 0
    # the documented share: floor / K + (1 - floor) * deficit / sum(deficits)
    deficits = {"mold": 0.9, "stain": 0.5, "pipe": 0.2}
    for name, deficit in deficits.items():
        assert plan.notes["share"][name] == pytest.approx(0.2 / 3 + 0.8 * deficit / 1.6)
    # weak = share above uniform (1/3): only mold (stain's 0.317 is just below)
    assert set(plan.templates) == {"mold"} and plan.templates["mold"] == list(VARIETY_TEMPLATES)
    assert plan.notes["weak"] == ["mold"]
    sharper = plan_from_metrics(metrics, 100, power=3.0)
    assert sharper.images["mold"] > plan.images["mold"]
    uniform = plan_from_metrics(metrics, 99, floor=1.0)
    assert set(uniform.images.values()) == {33} and not uniform.templates
    plain = plan_from_metrics(metrics, 100, variety=False)
    assert plain.images == plan.images and not plain.templates and not plain.scenes
    scenes = plan_from_metrics(metrics, 10, scenes=["in a basement"])
    assert scenes.scenes == {"mold": ["in a basement"]}


def test_plan_from_metrics_reads_every_metrics_form():
    class Semantic:  # what seemadapt's SemanticResults exposes
        class_names = ("mold", "stain", "background")
        iou = np.array([0.2, 0.6, 0.9])

    class Eval:
        semantic = Semantic()

    class Run:
        def __init__(self) -> None:
            self.metrics = {"miou": 0.5, "iou/mold": 0.2, "iou/stain": 0.6, "pq": 0.1}

    expected = {"mold": 0.2, "stain": 0.6}
    for form in (Semantic(), Eval(), Run(), Run().metrics, {"mold": 0.2, "stain": 0.6, "background": 0.9}):
        scores = per_class_iou(form)
        assert {k: scores[k] for k in expected} == pytest.approx(expected)
        assert plan_from_metrics(form, 10).images == plan_from_metrics(expected, 10).images


def test_unscored_classes_get_the_mean_deficit_and_bad_metrics_fail():
    plan = plan_from_metrics({"mold": 0.2, "stain": math.nan, "pipe": 0.6}, 30)
    assert plan.notes["unscored"] == ["stain"]
    assert plan.notes["share"]["stain"] == pytest.approx(
        (plan.notes["share"]["mold"] + plan.notes["share"]["pipe"]) / 2
    )
    listed = plan_from_metrics({"mold": 0.2}, 10, classes=["mold", "pipe"])
    assert listed.notes["unscored"] == ["pipe"]
    with pytest.raises(ValueError, match="divide percentages by 100"):
        plan_from_metrics({"mold": 45.0}, 10)
    with pytest.raises(ValueError, match="budget"):
        plan_from_metrics({"mold": 0.4}, 0)
    with pytest.raises(ValueError, match="floor"):
        plan_from_metrics({"mold": 0.4}, 5, floor=2.0)


# ---------------------------------------------------------------------------------------------- generate(plan=)
def test_generate_follows_a_plan_and_reports_it(pipe):
    plan = plan_from_metrics({"cat": 0.9, "dog": 0.1}, 6, floor=0.0)
    ds = generate(["cat", "dog"], num_images=6, model=pipe, plan=plan, **FAST)
    first_class = Counter("dog" if "dog" in p and ("cat" not in p or p.index("dog") < p.index("cat")) else "cat"
                          for p in ds["prompt"])  # fmt: skip
    assert first_class == Counter(plan.images)
    settings = settings_of(ds)
    assert settings["plan"]["images"] == plan.images and settings["plan"]["notes"]["kind"] == "metrics"
    # a plan made for another budget is scaled to num_images
    smaller = generate(["cat", "dog"], num_images=3, model=pipe, plan=plan, **FAST)
    assert len(smaller) == 3
    with pytest.raises(ValueError, match="drop `prompts`"):
        generate(["cat", "dog"], num_images=2, model=pipe, plan=plan, prompts=["a cat"], **FAST)
    with pytest.raises(ValueError, match="not target classes"):
        generate(["cat"], num_images=2, model=pipe, plan=plan, **FAST)
