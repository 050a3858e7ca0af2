"""From evaluation back to generation: a model's per-class IoU turned into the next round's generation plan.

The classes a fine-tuned model segments worst are the ones more (and more varied) synthetic data can help most, so
they get more of the budget. Each class's share mixes a uniform floor with its IoU deficit::

    share_c = floor / K + (1 - floor) * (1 - IoU_c)^power / sum_j (1 - IoU_j)^power

``floor`` (default 0.2) keeps every class in the data (a class left out of a round is forgotten by the next model);
``power`` > 1 concentrates the budget on the weakest classes. A class the evaluation could not score (NaN: absent
from the evaluation data and never predicted) gets the mean deficit. Classes whose share exceeds a uniform share
are *weak*: with ``variety=True`` they also get extra templates (:data:`~diffsynth.balance.VARIETY_TEMPLATES`) and
the given ``scenes``, so their extra images are not near-copies of each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from diffsynth.balance import VARIETY_TEMPLATES, GenerationPlan, largest_remainder

__all__ = ["per_class_iou", "plan_from_metrics"]


def per_class_iou(metrics: Any) -> dict[str, float]:
    """``{class: IoU}`` from what evaluations return: a ``{class: IoU}`` dict, a flat metrics dict with
    ``"iou/<class>"`` keys (``Run.metrics``, ``EvalResult.metrics``), anything with ``class_names`` and ``iou``
    (seemadapt's ``SemanticResults``), or anything with a ``.semantic`` of that kind (``EvalResult``) or a
    ``.metrics`` dict (``Run``). IoUs are fractions in [0, 1]; NaN marks an unscored class."""
    semantic = getattr(metrics, "semantic", None)
    if semantic is not None and hasattr(semantic, "class_names"):
        metrics = semantic
    if hasattr(metrics, "class_names") and hasattr(metrics, "iou"):
        scores = {str(n): float(v) for n, v in zip(metrics.class_names, np.asarray(metrics.iou), strict=True)}
    else:
        if not isinstance(metrics, Mapping) and isinstance(getattr(metrics, "metrics", None), Mapping):
            metrics = metrics.metrics
        if not isinstance(metrics, Mapping):
            raise TypeError(
                "metrics must be {class: IoU}, a flat dict with 'iou/<class>' keys, SemanticResults or an "
                f"EvalResult / Run; got {type(metrics).__name__}."
            )
        prefixed = {k[4:]: v for k, v in metrics.items() if isinstance(k, str) and k.startswith("iou/")}
        raw = prefixed or metrics
        scores = {}
        for name, value in raw.items():
            if value is None:
                value = math.nan
            if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
                raise TypeError(f"metrics[{name!r}] must be an IoU number, got {value!r}.")
            scores[str(name)] = float(value)
    if not scores:
        raise ValueError("metrics hold no per-class IoU; evaluate with the semantic task.")
    for name, value in scores.items():
        if not math.isnan(value) and not 0.0 <= value <= 1.0:
            raise ValueError(
                f"IoU of {name!r} is {value}; IoUs are fractions in [0, 1] (divide percentages by 100)."
            )
    return scores


def plan_from_metrics(
    metrics: Any,
    budget: int,
    *,
    floor: float = 0.2,
    variety: bool = True,
    power: float = 1.0,
    classes: Sequence[str] | None = None,
    background: str | None = "background",
    templates: Sequence[str] | None = None,
    scenes: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
) -> GenerationPlan:
    """A :class:`~diffsynth.balance.GenerationPlan` of ``budget`` images that favours low-IoU classes.

    Args:
        metrics: per-class IoU in any form :func:`per_class_iou` reads.
        budget: images to plan.
        floor: fraction of the budget spread evenly over all classes, in [0, 1] (1 = uniform plan).
        variety: give weak classes (share above uniform) extra templates and the ``scenes``.
        power: exponent on the IoU deficit (> 1 favours the weakest classes more).
        classes: the classes to generate (default: the scored classes except ``background``); classes missing from
            ``metrics`` count as unscored.
        templates: the extra templates for weak classes (default :data:`~diffsynth.balance.VARIETY_TEMPLATES`).
        scenes: scene phrases for weak classes: one list for all, or ``{class: [phrase, ...]}``.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"plan_from_metrics: budget must be an int >= 1 (images), got {budget!r}.")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"plan_from_metrics: floor must be in [0, 1] (1 = uniform), got {floor}.")
    if not power > 0:
        raise ValueError(f"plan_from_metrics: power must be > 0, got {power}.")
    scores = per_class_iou(metrics)
    names = list(classes) if classes is not None else [n for n in scores if n != background]
    if not names:
        raise ValueError(
            f"plan_from_metrics: no class to plan (scored: {sorted(scores)}, background={background!r})."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"plan_from_metrics: classes lists a name twice: {names}.")
    iou = {n: scores.get(n, math.nan) for n in names}
    deficits = {n: (1.0 - v) ** power for n, v in iou.items() if not math.isnan(v)}
    mean_deficit = float(np.mean(list(deficits.values()))) if deficits else 1.0
    unscored = [n for n in names if math.isnan(iou[n])]
    for n in unscored:
        deficits[n] = mean_deficit
    total = sum(deficits.values())
    k = len(names)
    share = {n: floor / k + (1.0 - floor) * (deficits[n] / total if total > 0 else 1.0 / k) for n in names}
    images = largest_remainder(share, budget)
    weak = [n for n in names if share[n] > 1.0 / k + 1e-12]
    extra_templates: dict[str, list[str]] = {}
    extra_scenes: dict[str, list[str]] = {}
    if variety:
        pool = list(templates) if templates is not None else list(VARIETY_TEMPLATES)
        for n in weak:
            if pool:
                extra_templates[n] = pool
            if isinstance(scenes, Mapping):
                if scenes.get(n):
                    extra_scenes[n] = list(scenes[n])
            elif scenes:
                extra_scenes[n] = [scenes] if isinstance(scenes, str) else list(scenes)
    notes = {
        "kind": "metrics",
        "iou": {n: (None if math.isnan(v) else v) for n, v in iou.items()},
        "floor": floor,
        "power": power,
        "share": share,
        "weak": weak,
        "unscored": unscored,
    }
    return GenerationPlan(images, extra_templates, extra_scenes, notes)
