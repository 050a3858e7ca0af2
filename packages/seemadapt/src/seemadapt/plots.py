"""PNG plots of training and evaluation: loss curves, per-class scores, per-class IoU over rounds.

Figures are drawn with matplotlib's object API on an Agg canvas, never through ``pyplot``: no global
backend switch, no open-figure registry, so the plots work the same in scripts, notebooks, and headless
training processes. Scores are fractions in [0, 1] (as the metrics return them) and are drawn as %.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seemadapt.metrics import PanopticResults, SemanticResults

# History keys that are neither losses nor evaluation scores.
_NOT_PLOTTED = frozenset({"step", "epoch", "lr", "learning_rate", "time", "elapsed", "samples", "grad_norm"})


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=fig.dpi)
    return path


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [
        (float(h["step"]), float(h[key]))
        for h in history
        if _is_number(h.get(key)) and math.isfinite(float(h[key]))
    ]
    if not points:
        return np.empty(0), np.empty(0)
    steps, values = np.array(points).T
    return steps, values


def _ema(values: np.ndarray, smoothing: float) -> np.ndarray:
    out = np.empty_like(values)
    running = values[0]
    for i, value in enumerate(values):
        running = smoothing * running + (1.0 - smoothing) * value
        out[i] = running
    return out


def loss_curve_figure(
    history: Sequence[Mapping[str, Any]],
    *,
    loss_keys: Sequence[str] | None = None,
    metric_keys: Sequence[str] | None = None,
    smoothing: float = 0.0,
    log_scale: bool = False,
    title: str | None = None,
) -> Figure:
    """The figure :func:`plot_loss_curve` saves (see there)."""
    if not history:
        raise ValueError("history is empty; log at least one {'step': ..., 'loss': ...} record.")
    for i, record in enumerate(history):
        if not _is_number(record.get("step")):
            raise ValueError(f"history[{i}] has no numeric 'step'; every record needs one.")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1) (0 = raw curve), got {smoothing}.")
    numeric = [k for k in dict.fromkeys(k for h in history for k in h) if k not in _NOT_PLOTTED]
    numeric = [k for k in numeric if any(_is_number(h.get(k)) for h in history)]
    if loss_keys is None:
        loss_keys = [k for k in numeric if "loss" in k.lower()]
    if metric_keys is None:
        metric_keys = [k for k in numeric if k not in loss_keys]
    if not loss_keys and not metric_keys:
        raise ValueError("history has no numeric values to plot besides 'step'.")

    panels = int(bool(loss_keys)) + int(bool(metric_keys))
    fig = Figure(figsize=(9, 3.6 * panels), dpi=100, layout="constrained")
    axes = fig.subplots(panels, 1, squeeze=False, sharex=True)[:, 0]
    if loss_keys:
        _draw_losses(axes[0], history, loss_keys, smoothing, log_scale)
    if metric_keys:
        _draw_metrics(axes[-1], history, metric_keys)
    axes[-1].set_xlabel("step")
    if title:
        fig.suptitle(title)
    return fig


def _draw_losses(
    ax: Any, history: Sequence[Mapping[str, Any]], loss_keys: Sequence[str], smoothing: float, log_scale: bool
) -> None:
    # The total loss first and bold; the components thin, so the sum stays readable.
    ordered = sorted(loss_keys, key=lambda k: k != "loss")
    for key in ordered:
        steps, values = _series(history, key)
        if not len(steps):
            continue
        width = 2.0 if key == "loss" else 0.9
        if smoothing > 0:
            (raw,) = ax.plot(steps, values, linewidth=width, alpha=0.25)
            ax.plot(steps, _ema(values, smoothing), linewidth=width, color=raw.get_color(), label=key)
        else:
            ax.plot(steps, values, linewidth=width, label=key)
    ax.set_ylabel("loss")
    if log_scale:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", ncol=max(1, math.ceil(len(ordered) / 12)), loc="upper right")


def _draw_metrics(ax: Any, history: Sequence[Mapping[str, Any]], metric_keys: Sequence[str]) -> None:
    for key in metric_keys:
        steps, values = _series(history, key)
        if len(steps):
            ax.plot(steps, values, marker="o", markersize=3, label=key)
    ax.set_ylabel("evaluation")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")


def plot_loss_curve(
    history: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    loss_keys: Sequence[str] | None = None,
    metric_keys: Sequence[str] | None = None,
    smoothing: float = 0.0,
    log_scale: bool = False,
    title: str | None = None,
) -> Path:
    """Save training curves as a PNG.

    Args:
        history: records ``{"step": int, "loss": float, ...}``; other numeric keys are per-loss values
            (names containing "loss") or evaluation scores (the rest, except step/epoch/lr/time keys).
            Evaluation records may be separate and sparse (``{"step": 500, "miou": 0.31}``).
        path: where the PNG goes (parent folders are created).
        loss_keys, metric_keys: override the automatic split.
        smoothing: exponential moving-average factor in [0, 1) drawn over the faint raw curve.
        log_scale: logarithmic loss axis.
    Returns the path written.
    """
    fig = loss_curve_figure(
        history,
        loss_keys=loss_keys,
        metric_keys=metric_keys,
        smoothing=smoothing,
        log_scale=log_scale,
        title=title,
    )
    return _save(fig, path)


def _per_class_table(results: Any) -> tuple[list[str], dict[str, np.ndarray]]:
    if isinstance(results, SemanticResults):
        return list(results.class_names), {
            "IoU": results.iou,
            "precision": results.precision,
            "recall": results.recall,
        }
    if isinstance(results, PanopticResults):
        rows = results.per_class
        return [r.name for r in rows], {
            "PQ": np.array([r.pq for r in rows]),
            "SQ": np.array([r.sq for r in rows]),
            "RQ": np.array([r.rq for r in rows]),
        }
    if isinstance(results, Mapping) and results:
        names = [str(n) for n in results]
        metrics = list(dict.fromkeys(m for scores in results.values() for m in scores))
        return names, {
            m: np.array([float(results[n].get(m, math.nan)) for n in results], dtype=np.float64)
            for m in metrics
        }
    raise TypeError(
        "plot_per_class() takes SemanticResults, PanopticResults or {class: {metric: fraction}}, "
        f"got {type(results).__name__}."
    )


def per_class_figure(results: Any, *, title: str | None = None) -> Figure:
    """The figure :func:`plot_per_class` saves (see there)."""
    names, metrics = _per_class_table(results)
    k, m = len(names), len(metrics)
    fig = Figure(figsize=(max(6.0, 0.9 * k * max(m, 1) / 2 + 2), 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    x = np.arange(k)
    width = 0.8 / max(m, 1)
    for j, (metric, values) in enumerate(metrics.items()):
        offsets = x - 0.4 + width * (j + 0.5)
        heights = np.where(np.isnan(values), 0.0, 100 * values)
        bars = ax.bar(offsets, heights, width, label=metric)
        for bar, value in zip(bars, values):
            label = "n/a" if math.isnan(value) else f"{100 * value:.0f}"
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(x, names, rotation=30 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_ylim(0, 108)
    ax.set_ylabel("%")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncol=m, loc="upper center", bbox_to_anchor=(0.5, -0.12 if k <= 6 else -0.25))
    if title:
        ax.set_title(title)
    return fig


def plot_per_class(results: Any, path: str | Path, *, title: str | None = None) -> Path:
    """Save per-class bars as a PNG: IoU / precision / recall for :class:`SemanticResults`, PQ / SQ / RQ
    for :class:`PanopticResults`, or any ``{class: {metric: fraction}}``. Undefined (NaN) scores are
    labelled ``n/a``. Returns the path written."""
    return _save(per_class_figure(results, title=title), path)


def _round_scores(entry: Any, index: int) -> dict[str, float]:
    if isinstance(entry, SemanticResults):
        return {name: float(v) for name, v in zip(entry.class_names, entry.iou)}
    if not isinstance(entry, Mapping):
        raise TypeError(
            f"rounds[{index}] must be {{class: IoU}} or SemanticResults, got {type(entry).__name__}."
        )
    scores = {str(k): float(v) for k, v in entry.items()}
    for name, value in scores.items():
        if not math.isnan(value) and not 0.0 <= value <= 1.0:
            raise ValueError(
                f"rounds[{index}][{name!r}] = {value}: IoUs are fractions in [0, 1]; divide percentages by 100."
            )
    return scores


def iou_over_rounds_figure(rounds: Sequence[Any], *, title: str | None = None) -> Figure:
    """The figure :func:`plot_iou_over_rounds` saves (see there)."""
    if not rounds:
        raise ValueError("rounds is empty; give one {class: IoU} per round.")
    table = [_round_scores(entry, i) for i, entry in enumerate(rounds)]
    names = list(dict.fromkeys(name for scores in table for name in scores))
    x = np.arange(len(table))
    fig = Figure(figsize=(max(6.0, 0.6 * len(table) + 4), 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    for name in names:
        values = np.array([scores.get(name, math.nan) for scores in table])
        ax.plot(x, 100 * values, marker="o", markersize=4, linewidth=1.2, label=name)
    means = np.array(
        [
            np.nanmean(list(s.values())) if any(not math.isnan(v) for v in s.values()) else math.nan
            for s in table
        ]
    )
    ax.plot(x, 100 * means, color="black", linestyle="--", linewidth=2.2, marker="s", label="mean (mIoU)")
    ax.set_xticks(x)
    ax.set_xlabel("round")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title)
    return fig


def plot_iou_over_rounds(rounds: Sequence[Any], path: str | Path, *, title: str | None = None) -> Path:
    """Save per-class IoU across rounds (e.g. closed-loop generate -> fine-tune rounds) as a PNG.

    ``rounds[i]`` is ``{class name: IoU fraction}`` (NaN for an unscored class) or the round's
    :class:`SemanticResults`; a dashed line shows each round's mean over its scored classes.
    Returns the path written.
    """
    return _save(iou_over_rounds_figure(rounds, title=title), path)
