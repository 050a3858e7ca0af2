"""``Run``: what a fine-tuning run returns - the trained model, its placement, metrics, history and reports."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from seemadapt import hub
from seemadapt.adapters import AdapterPlacement, AdapterReport
from seemadapt.metrics import PanopticResults, SemanticResults
from seemadapt.model.seem import SEEM
from seemadapt.plots import plot_loss_curve, plot_per_class
from seemadapt.train.config import TrainConfig

__all__ = ["Run", "save_adapter_folder"]


def save_adapter_folder(
    model: nn.Module,
    folder: str | Path,
    *,
    placement: AdapterPlacement,
    base_model: str,
    classes: list[str],
    metrics: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    datasets: list[Any] | tuple[Any, ...] = (),
    thing_classes: list[str] | None = None,
) -> Path:
    """Write the adapter weights and what is needed to rebuild the model into ``folder`` with
    :func:`seemadapt.hub.save_adapters` (weights, placement, model card)."""
    folder = Path(folder)
    result = hub.save_adapters(
        model,
        folder,
        placement=placement,
        base_model=base_model,
        classes=classes,
        thing_classes=thing_classes,
        metrics=metrics,
        config=config,
        datasets=list(datasets),
    )
    return Path(result) if result is not None else folder


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class Run:
    """The result of :func:`seemadapt.finetune`.

    Attributes:
        model: the fine-tuned SEEM (final weights, eval mode).
        placement: the adapter placement it was trained with.
        classes: the class list (contiguous order) it was trained and evaluated with.
        thing_classes: those of ``classes`` that are things (panoptic inference: the others are stuff).
        metrics: the last evaluation's metrics, flattened (``{"semantic/miou": 0.71, ...}``); empty without eval
            data.
        history: training log records (``step``, ``loss``, per-term losses, ``lr``, ``grad_norm``, ``time`` =
            seconds per step, ``data_time`` = seconds of it spent waiting for data) averaged over each logging
            window, and ``{"step", "eval_<best_metric>"}`` records.
        eval_history: every evaluation's metrics with its ``step``.
        best_step, best_score, best_dir: the best evaluation (by ``TrainConfig.best_metric``) and the folder with
            its adapters.
        output_dir, report_dir: the run's folders (the report holds ``results.md``, ``metrics.json``,
            ``history.json``, ``loss_curve.png`` and ``per_class.png``).
    """

    model: SEEM
    placement: AdapterPlacement
    classes: list[str]
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    config: TrainConfig
    base_model: str
    output_dir: Path
    report_dir: Path
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    best_step: int | None = None
    best_score: float | None = None
    best_dir: Path | None = None
    eval_result: Any = None
    report: AdapterReport | None = None
    datasets: list[Any] = field(default_factory=list)
    thing_classes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ saving

    def save(self, folder: str | Path) -> Path:
        """Save the adapter weights, placement, classes, metrics and config (:func:`seemadapt.hub.save_adapters`)."""
        return save_adapter_folder(
            self.model,
            folder,
            placement=self.placement,
            base_model=self.base_model,
            classes=self.classes,
            thing_classes=self.thing_classes,
            metrics=self.metrics or None,
            config=self.config.to_dict(),
            datasets=self.datasets,
        )

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None) -> Any:
        """Save to a temporary folder and upload it with :func:`seemadapt.hub.push_adapters`; returns its result."""
        with tempfile.TemporaryDirectory(prefix="seemadapt-push-") as tmp:
            folder = self.save(Path(tmp) / "adapters")
            return hub.push_adapters(folder, repo_id, private=private, token=token)

    # ------------------------------------------------------------------ reports

    def table(self) -> str:
        """The evaluation table (the evaluator's own when available), else the metrics one per line."""
        if self.eval_result is not None and hasattr(self.eval_result, "table"):
            return str(self.eval_result.table())
        if not self.metrics:
            return "(no evaluation data)"
        width = max(len(k) for k in self.metrics)
        return "\n".join(f"{k:<{width}}  {v:.4f}" for k, v in self.metrics.items())

    def write_report(self) -> Path:
        """Write ``results.md``, ``metrics.json``, ``history.json`` and the plots into :attr:`report_dir`."""
        folder = Path(self.report_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "history.json").write_text(
            json.dumps(_json_safe({"train": self.history, "eval": self.eval_history}), indent=1)
        )
        best = {
            "step": self.best_step,
            "score": self.best_score,
            "folder": str(self.best_dir) if self.best_dir else None,
        }
        (folder / "metrics.json").write_text(
            json.dumps(_json_safe({"final": self.metrics, "best": best}), indent=2)
        )
        lines = [
            f"# seemadapt fine-tuning: {self.base_model}",
            "",
            f"- classes: {', '.join(self.classes)}",
            f"- steps: {self.history[-1]['step'] if self.history else 0}",
        ]
        if self.best_step is not None:
            lines.append(f"- best {self.config.best_metric}: {self.best_score:.4f} at step {self.best_step}")
        if self.report is not None:
            lines += ["", "## Trainable parameters", "", "```", self.report.table(), "```"]
        lines += ["", "## Evaluation (last)", "", "```", self.table(), "```", ""]
        (folder / "results.md").write_text("\n".join(lines))
        keys = list(dict.fromkeys(k for record in self.history for k in record))
        losses = [k for k in keys if k.startswith("loss")]
        scores = [k for k in keys if k.startswith("eval_")]
        if losses:
            plot_loss_curve(
                self.history,
                folder / "loss_curve.png",
                loss_keys=losses,
                metric_keys=scores,
                title="training",
            )
        per_class = _per_class_results(self.eval_result)
        if per_class is not None:
            plot_per_class(per_class, folder / "per_class.png", title="per-class scores (last evaluation)")
        return folder


def _per_class_results(result: Any) -> Any:
    """The semantic (else panoptic) results object inside an evaluation result, if any."""
    if result is None:
        return None
    kinds = (SemanticResults, PanopticResults)
    if isinstance(result, kinds):
        return result
    candidates: list[Any] = []
    for name in ("semantic", "panoptic", "results"):
        value = getattr(result, name, None)
        if isinstance(value, dict):
            candidates += list(value.values())
        elif value is not None:
            candidates.append(value)
    for kind in kinds:
        for value in candidates:
            if isinstance(value, kind):
                return value
    return None
