"""Evaluation during training: flat metrics, the metric that picks the best checkpoint, and the best-score record.

The trainer does not evaluate by itself: it is given an ``evaluator`` (what :func:`seemadapt.finetune` passes is
:func:`seemadapt.evaluation.evaluate`), so the training layer never imports the evaluation layer above it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor

from seemadapt.train.checkpoints import TrainState

__all__ = ["Evaluator", "flatten_metrics", "pick_metric", "record_evaluation"]

logger = logging.getLogger(__name__)

#: ``evaluator(model, data, *, classes, batch_size, device, tasks, image_size, progress)`` -> a result with
#: ``.metrics`` (or a metrics mapping)
Evaluator = Callable[..., Any]


def flatten_metrics(metrics: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a (nested) metrics mapping as ``{"a/b": float}``."""
    out: dict[str, float] = {}
    if hasattr(metrics, "to_dict") and not isinstance(metrics, dict):
        metrics = metrics.to_dict()
    if not isinstance(metrics, dict):
        return out
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name + "/"))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float | np.integer | np.floating) or (
            isinstance(value, Tensor) and value.numel() == 1
        ):
            out[name] = float(value)
    return out


def pick_metric(metrics: dict[str, float], wanted: str) -> str | None:
    """The key of ``metrics`` that ``wanted`` names: exact, else the shortest key whose last part matches it
    (case-insensitive; ``"miou"`` finds ``"semantic/mIoU"``)."""
    if wanted in metrics:
        return wanted
    low = wanted.lower()
    hits = [k for k in metrics if k.lower().replace("-", "_").split("/")[-1] in (low, f"semantic_{low}")]
    hits += [k for k in metrics if k.lower().endswith(f"/{low}") and k not in hits]
    return min(hits, key=len) if hits else None


def record_evaluation(state: TrainState, step: int, metrics: dict[str, float], best_metric: str) -> bool:
    """Add an evaluation at ``step`` to ``state`` (eval history, the best-metric curve, the best score); returns
    whether it is the new best."""
    state.eval_history.append({"step": step, **metrics})
    key = pick_metric(metrics, best_metric)
    if key is None:
        logger.warning(
            "best_metric %r is not among the evaluation metrics %s; the best checkpoint is not tracked.",
            best_metric,
            sorted(metrics),
        )
        return False
    if not math.isfinite(metrics[key]):
        return False
    state.history.append({"step": step, f"eval_{best_metric}": metrics[key]})
    if state.best_score is None or metrics[key] > state.best_score:
        state.best_score, state.best_step, state.best_metric = metrics[key], step, key
        return True
    return False
