"""Generation plans: how a budget of images is split over classes, and with which prompts.

Image counts are a poor proxy for what a model learns from: a class SD draws large (a wall) yields many more pixels
per image than one it draws small (a crack), and a class whose attention often fails yields few instances. A
:class:`GenerationPlan` says how many images to draw *for* each class (the class each image is planned around), plus
extra prompt variety per class; :func:`plan_for_targets` sizes it from per-class pixel or instance targets and the
yields observed so far (a :func:`~diffsynth.health.health_report`, a dataset, or a :class:`YieldTracker`), and
:func:`diffsynth.plan_from_metrics` sizes it from a model's per-class IoU. ``generate(..., plan=plan)`` follows it.

Every sample's plan stays a pure function of its index (and the plan), so planned runs resume and shard like any
other: image ``i`` is planned around the class of a smooth proportional schedule (every prefix of the run keeps the
planned proportions), its template, scene and extra classes come from a generator seeded by ``(seed, i)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import Dataset

from diffsynth.categories import Category
from diffsynth.health import health_report
from diffsynth.plan import DEFAULT_TEMPLATES, SamplePlan, classes_in_prompt, join_names, sample_seed

__all__ = [
    "VARIETY_TEMPLATES",
    "GenerationPlan",
    "YieldTracker",
    "estimate_yields",
    "largest_remainder",
    "plan_for_targets",
    "plan_samples",
]

#: Extra templates given to classes that need more prompt variety (views, light, clutter, framing).
VARIETY_TEMPLATES: tuple[str, ...] = (
    "a wide-angle photo of {classes}",
    "a photo of {classes} in dim light",
    "a photo of {classes} in bright daylight",
    "a photo of {classes}, seen from above",
    "a photo of {classes} in a cluttered scene",
    "a cropped close-up of {classes}",
    "an old photo of {classes}",
    "a smartphone photo of {classes}",
)
UNITS = ("pixels", "instances")


def largest_remainder(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Integer counts proportional to ``weights`` that sum to ``total`` (ties to the earlier class)."""
    names = list(weights)
    w = np.array([max(0.0, float(weights[n])) for n in names], dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("plan weights are all zero; at least one class needs images.")
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(int)
    order = sorted(range(len(names)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - int(counts.sum())]:
        counts[i] += 1
    return {n: int(c) for n, c in zip(names, counts)}


@dataclass
class GenerationPlan:
    """How many images to draw for each class, and extra prompt variety per class.

    Args:
        images: ``{class: images}`` planned around each class (its first class in the prompt). Only the
            proportions matter when ``generate`` is given another ``num_images``: the plan is then scaled.
        templates: ``{class: [template, ...]}`` extra prompt templates (with ``{classes}``) for that class's images,
            drawn alongside the run's own templates.
        scenes: ``{class: [phrase, ...]}`` scene phrases appended to that class's prompts (``"..., in a basement"``);
            one is drawn per image, or none (each option equally likely). They must not name any class.
        notes: why the plan looks like this (metrics, targets, yields); stored in the dataset settings and card.
    """

    images: dict[str, int]
    templates: dict[str, list[str]] = field(default_factory=dict)
    scenes: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.images, Mapping) or not self.images:
            raise ValueError("GenerationPlan.images must be a non-empty {class: number of images} mapping.")
        images = {}
        for name, count in self.images.items():
            if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
                raise ValueError(f"GenerationPlan.images[{name!r}] must be an int >= 0, got {count!r}.")
            images[str(name)] = int(count)
        if sum(images.values()) <= 0:
            raise ValueError(
                "GenerationPlan.images plans no image at all; give at least one class a count > 0."
            )
        self.images = images
        for attr in ("templates", "scenes"):
            value = getattr(self, attr)
            if not isinstance(value, Mapping):
                raise ValueError(f"GenerationPlan.{attr} must be a {{class: [text, ...]}} mapping.")
            cleaned: dict[str, list[str]] = {}
            for name, texts in value.items():
                if name not in images:
                    raise ValueError(
                        f"GenerationPlan.{attr} names {name!r}, which has no entry in images {sorted(images)}."
                    )
                texts = [texts] if isinstance(texts, str) else list(texts)
                if any(not isinstance(t, str) or not t.strip() for t in texts):
                    raise ValueError(f"GenerationPlan.{attr}[{name!r}] must hold non-empty strings.")
                if attr == "templates" and any("{classes}" not in t for t in texts):
                    raise ValueError(
                        f"GenerationPlan.templates[{name!r}]: every template must contain '{{classes}}'."
                    )
                cleaned[str(name)] = [t.strip() for t in texts]
            setattr(self, attr, cleaned)
        self.notes = dict(self.notes)

    @property
    def num_images(self) -> int:
        return sum(self.images.values())

    @property
    def weights(self) -> dict[str, float]:
        """The share of the images planned around each class."""
        total = self.num_images
        return {name: count / total for name, count in self.images.items()}

    def scaled(self, num_images: int) -> GenerationPlan:
        """The same proportions over ``num_images`` images (largest-remainder rounding)."""
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"GenerationPlan.scaled: num_images must be an int >= 1, got {num_images!r}.")
        if num_images == self.num_images:
            return self
        return GenerationPlan(
            largest_remainder(self.images, num_images), self.templates, self.scenes, self.notes
        )

    def schedule(self) -> list[str]:
        """The class each image is planned around, in order: a smooth proportional sequence, so every prefix of a
        run keeps the planned proportions (image ``i`` goes to the class furthest behind its share)."""
        names = list(self.images)
        counts = np.array([self.images[n] for n in names], dtype=np.float64)
        total = int(counts.sum())
        given = np.zeros(len(names))
        out = []
        for i in range(total):
            lag = counts * (i + 1) / total - given
            k = int(np.argmax(lag))  # first maximum: ties go to the earlier class
            given[k] += 1
            out.append(names[k])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": dict(self.images),
            "templates": {k: list(v) for k, v in self.templates.items()},
            "scenes": {k: list(v) for k, v in self.scenes.items()},
            "notes": dict(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | GenerationPlan) -> GenerationPlan:
        if isinstance(data, GenerationPlan):
            return data
        if not isinstance(data, Mapping) or "images" not in data:
            raise ValueError(
                "a generation plan must be a GenerationPlan or a dict with 'images' ({class: count}) and optional "
                f"'templates', 'scenes', 'notes'; got {data!r:.120}."
            )
        unknown = sorted(set(data) - {"images", "templates", "scenes", "notes"})
        if unknown:
            raise ValueError(
                f"generation plan has unknown keys {unknown}; use images, templates, scenes, notes."
            )
        return cls(
            dict(data["images"]),
            dict(data.get("templates") or {}),
            dict(data.get("scenes") or {}),
            dict(data.get("notes") or {}),
        )

    def table(self) -> str:
        """A Markdown table: images and share per class, and the extra variety each gets."""
        lines = ["| class | images | share | extra templates | scenes |", "|---|---|---|---|---|"]
        for name, count in self.images.items():
            lines.append(
                f"| {name} | {count} | {100 * count / self.num_images:.1f} % | "
                f"{len(self.templates.get(name, []))} | {len(self.scenes.get(name, []))} |"
            )
        return "\n".join(lines)


def plan_samples(
    plan: GenerationPlan | Mapping[str, Any],
    categories: Sequence[Category],
    num_images: int,
    *,
    seed: int = 0,
    templates: Sequence[str] | None = None,
    classes_per_image: int = 1,
    context: Sequence[str] = (),
    num_init_images: int = 0,
    background: str | None = "background",
) -> list[SamplePlan]:
    """The :class:`~diffsynth.plan.SamplePlan` of images ``0..num_images-1`` under ``plan`` (scaled to
    ``num_images``). With ``classes_per_image > 1`` the other classes of an image are drawn in proportion to the
    plan's shares (classes with no share only when nothing else is left)."""
    plan = GenerationPlan.from_dict(plan).scaled(num_images)
    context = tuple(context)
    target_names = _plannable_targets(plan, categories, background, context, classes_per_image)
    base = tuple(templates or DEFAULT_TEMPLATES)
    _check_variety(base, plan, categories)
    share = np.array([plan.weights.get(n, 0.0) for n in target_names], dtype=np.float64)
    plans = []
    for index, primary in enumerate(plan.schedule()):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, index, 13])
        chosen = [primary, *_other_classes(rng, primary, target_names, share, classes_per_image)]
        pool = base + tuple(plan.templates.get(primary, ()))
        template = pool[int(rng.integers(len(pool)))]
        prompt = template.format(classes=join_names(chosen))
        scenes = plan.scenes.get(primary)
        if scenes:
            pick = int(rng.integers(len(scenes) + 1))
            if pick:
                prompt += ", " + scenes[pick - 1]
        if context:
            prompt += ", with " + " and ".join(context)
        init = index % num_init_images if num_init_images else None
        plans.append(SamplePlan(index, prompt, tuple(chosen) + context, sample_seed(seed, index), init))
    return plans


def _plannable_targets(
    plan: GenerationPlan,
    categories: Sequence[Category],
    background: str | None,
    context: tuple[str, ...],
    classes_per_image: int,
) -> list[str]:
    """The target class names (neither background nor context); the plan may name only these."""
    names = [c.name for c in categories]
    unknown = [c for c in context if c not in names]
    if unknown:
        raise ValueError(f"context classes {unknown} are not among the categories {names}.")
    target_names = [c.name for c in categories if c.name != background and c.name not in context]
    bad = [n for n in plan.images if n not in target_names]
    if bad:
        raise ValueError(
            f"the generation plan names {bad}, which are not target classes of this run {target_names} "
            "(background and context classes cannot be planned); add them to classes or drop them from the plan."
        )
    if not 1 <= classes_per_image <= len(target_names):
        raise ValueError(
            f"classes_per_image={classes_per_image} must be between 1 and the number of target classes "
            f"({len(target_names)})."
        )
    return target_names


def _check_variety(base: tuple[str, ...], plan: GenerationPlan, categories: Sequence[Category]) -> None:
    """Templates need ``{classes}``; a scene phrase must not name a class (it would count as prompted but never
    be segmented)."""
    if any("{classes}" not in t for t in base):
        raise ValueError("every prompt template must contain '{classes}', e.g. 'a photo of {classes}'.")
    for name, phrases in plan.scenes.items():
        for phrase in phrases:
            named = classes_in_prompt(phrase, categories)
            if named:
                raise ValueError(
                    f"scene phrase {phrase!r} for {name!r} names the classes {list(named)}; a scene must not name a "
                    "class (it would count as prompted but never be segmented)."
                )


def _other_classes(
    rng: np.random.Generator, primary: str, target_names: list[str], share: np.ndarray, classes_per_image: int
) -> list[str]:
    """The image's classes besides ``primary``, drawn in proportion to the plan's shares (classes with no share
    only when too few others have one)."""
    if classes_per_image <= 1:
        return []
    others = [i for i, n in enumerate(target_names) if n != primary]
    p = share[others]
    p = p / p.sum() if p.sum() > 0 else np.full(len(others), 1.0 / len(others))
    nonzero = int(np.count_nonzero(p))
    take = classes_per_image - 1
    if nonzero < take:  # too few classes with a share: top up from the rest uniformly
        p = 0.5 * p + 0.5 / len(others)
    picks = rng.choice(len(others), size=take, replace=False, p=p)
    return [target_names[others[i]] for i in picks]


# ------------------------------------------------------------------------------------------------- yields
def _report(source: Any) -> dict[str, Any]:
    if isinstance(source, Dataset):
        return health_report(source)
    if isinstance(source, Mapping) and "classes" in source:
        return dict(source)
    raise TypeError(
        f"expected a health_report dict or a contract Dataset, got {type(source).__name__}; or give "
        "{class: value} directly."
    )


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}.")


def estimate_yields(source: Any, unit: str = "pixels") -> dict[str, float | None]:
    """Per class, the pixels (or instances) gained per image in which it was prompted, from a
    :func:`~diffsynth.health.health_report` or a contract dataset; ``None`` for classes never prompted."""
    _check_unit(unit)
    report = _report(source)
    return {
        c["name"]: (c[unit] / c["prompted_images"] if c["prompted_images"] else None)
        for c in report["classes"]
    }


class YieldTracker:
    """Running per-class yield estimates over the datasets generated so far.

    ``yields()`` shrinks each class's observed mean towards the mean over all classes by ``prior_images``
    pseudo-images, so a class seen in few images does not get a wildly over- or under-sized plan.
    """

    def __init__(self, unit: str = "pixels", prior_images: float = 1.0) -> None:
        _check_unit(unit)
        if prior_images < 0:
            raise ValueError(f"YieldTracker prior_images must be >= 0, got {prior_images}.")
        self.unit = unit
        self.prior_images = float(prior_images)
        self.amount: dict[str, float] = {}
        self.prompted: dict[str, int] = {}
        self.images = 0

    def update(self, source: Any) -> YieldTracker:
        """Add a dataset (or its health report) to the counts; returns self."""
        report = _report(source)
        self.images += int(report["num_images"])
        for c in report["classes"]:
            self.amount[c["name"]] = self.amount.get(c["name"], 0.0) + float(c[self.unit])
            self.prompted[c["name"]] = self.prompted.get(c["name"], 0) + int(c["prompted_images"])
        return self

    def totals(self) -> dict[str, float]:
        """Pixels (or instances) of each class collected so far."""
        return dict(self.amount)

    def yields(self) -> dict[str, float | None]:
        observed = {n: self.amount[n] / self.prompted[n] for n in self.amount if self.prompted.get(n)}
        if not observed:
            return {n: None for n in self.amount}
        prior = float(np.mean(list(observed.values())))
        k = self.prior_images
        return {
            n: (self.amount[n] + k * prior) / (self.prompted.get(n, 0) + k)
            if (self.prompted.get(n, 0) + k) > 0
            else None
            for n in self.amount
        }


def _needed_images(
    targets: Mapping[str, float],
    yields: Mapping[str, float | None],
    have: Mapping[str, float],
    fallback: float,
) -> tuple[dict[str, int], dict[str, float], list[str]]:
    """Per class: images still needed, the yield per image used, and the classes planned with ``fallback``."""
    needed: dict[str, int] = {}
    assumed = []
    per_image: dict[str, float] = {}
    for name, target in targets.items():
        rate = yields.get(name)
        if rate is None or rate <= 0:
            rate = fallback
            assumed.append(name)
        per_image[name] = float(rate)
        missing = max(0.0, float(target) - float(have.get(name, 0.0)))
        needed[name] = math.ceil(missing / rate) if missing > 0 else 0
    return needed, per_image, assumed


def plan_for_targets(
    targets: Mapping[str, float],
    yields: Mapping[str, float | None] | Any,
    *,
    unit: str = "pixels",
    have: Mapping[str, float] | Any | None = None,
    num_images: int | None = None,
    max_images: int | None = None,
    templates: Mapping[str, Sequence[str]] | None = None,
    scenes: Mapping[str, Sequence[str]] | None = None,
) -> GenerationPlan:
    """A plan that reaches per-class ``targets`` (pixels or instances) given per-image ``yields``.

    Args:
        targets: ``{class: pixels or instances wanted}``.
        yields: ``{class: amount per image in which the class is prompted}`` (:func:`estimate_yields`,
            :meth:`YieldTracker.yields`), or a health report / dataset to estimate them from. A class with no yield
            estimate (never prompted, or prompted and never found) is planned with the mean yield of the others and
            listed in ``notes["assumed_yield"]``.
        unit: ``"pixels"`` or ``"instances"``.
        have: amounts already collected (``{class: amount}``, a health report or a dataset); only the rest is planned.
        num_images: spend exactly this many images (the needed counts set the proportions).
        max_images: spend at most this many (the needed counts are scaled down if they exceed it).
        templates, scenes: extra variety per class (see :class:`GenerationPlan`).
    """
    _check_unit(unit)
    if not targets:
        raise ValueError("plan_for_targets: targets is empty; give {class: pixels or instances}.")
    if not isinstance(yields, Mapping) or "classes" in yields:
        yields = estimate_yields(yields, unit)
    if have is not None and (not isinstance(have, Mapping) or "classes" in have):
        have = {c["name"]: float(c[unit]) for c in _report(have)["classes"]}
    have = dict(have or {})
    for name, value in targets.items():
        if not isinstance(value, int | float) or value < 0 or math.isnan(value):
            raise ValueError(f"plan_for_targets: targets[{name!r}] must be a number >= 0, got {value!r}.")
    known = [float(v) for n, v in yields.items() if n in targets and v is not None and v > 0]
    if not known:
        known = [float(v) for v in yields.values() if v is not None and v > 0]
    if not known:
        raise ValueError(
            "plan_for_targets: no class has a positive yield estimate; generate a small pilot run first and pass "
            "its health report (or dataset) as yields."
        )
    needed, per_image, assumed = _needed_images(targets, yields, have, float(np.mean(known)))
    total = sum(needed.values())
    notes = {
        "kind": "targets",
        "unit": unit,
        "targets": {k: float(v) for k, v in targets.items()},
        "have": {k: float(have.get(k, 0.0)) for k in targets},
        "yield_per_image": per_image,
        "needed_images": dict(needed),
        "assumed_yield": assumed,
    }
    if total == 0:
        raise ValueError(
            "plan_for_targets: every target is already met by `have`; nothing to generate "
            f"(have {notes['have']}, targets {notes['targets']})."
        )
    images = dict(needed)
    if num_images is not None:
        images = largest_remainder(needed, int(num_images))
    elif max_images is not None and total > max_images:
        images = largest_remainder(needed, int(max_images))
        notes["capped"] = True
    return GenerationPlan(
        images,
        {k: list(v) for k, v in (templates or {}).items()},
        {k: list(v) for k, v in (scenes or {}).items()},
        notes,
    )
