"""``finetune``: SEEM + an adapter placement + any contract data, trained, evaluated and reported in one call.

>>> run = finetune(train=[real_ds, "me/wet-damage-synthetic"], eval=real_val,          # doctest: +SKIP
...                model="xdecoder/SEEM:seem_focalt_v1.pt", strategy="adapter-backbone/full-head",
...                max_steps=2000, batch_size=4)
>>> print(run.table()); run.push_to_hub("me/seem-wet-damage")                           # doctest: +SKIP

Run it as is for one process (GPU if there is one), or under ``accelerate launch`` / ``torchrun`` for DDP.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from seemadapt.adapters import AdapterPlacement, adapter_report, apply_adapters, resolve_placement
from seemadapt.evaluation import evaluate
from seemadapt.model.config import PRESETS
from seemadapt.model.seem import SEEM
from seemadapt.train.config import TrainConfig
from seemadapt.train.preflight import preflight
from seemadapt.train.run import Run
from seemadapt.train.trainer import Trainer

__all__ = ["DEFAULT_MODEL", "finetune", "load_model"]

DEFAULT_MODEL = "xdecoder/SEEM:seem_focalt_v1.pt"


def load_model(model: str | os.PathLike | SEEM = DEFAULT_MODEL) -> SEEM:
    """A SEEM model from what ``finetune(model=...)`` accepts.

    * a :class:`~seemadapt.model.seem.SEEM` instance: used as it is (it may already carry adapters);
    * ``"tiny"``, ``"focalt"``, ``"focall"``: a preset with **random** weights (``tiny`` is for tests and smoke
      runs; the other two warn, since fine-tuning random weights is rarely what one wants);
    * a local checkpoint file or folder, or a Hub reference ``"owner/name"`` / ``"owner/name:file.pt"``:
      :meth:`SEEM.from_pretrained` (official ``.pt`` files included).
    """
    if isinstance(model, SEEM):
        return model
    if not isinstance(model, str | os.PathLike):
        raise TypeError(
            f"model must be a SEEM, a preset name {sorted(PRESETS)}, a checkpoint path or a Hub reference like "
            f"{DEFAULT_MODEL!r}; got {type(model).__name__}."
        )
    text = os.fspath(model)
    if text in PRESETS and not Path(text).exists():
        if text != "tiny":
            warnings.warn(
                f"model={text!r} builds SEEM with random weights; pass a checkpoint such as {DEFAULT_MODEL!r} "
                "to fine-tune pretrained SEEM.",
                stacklevel=3,
            )
        return SEEM.from_config(text)
    return SEEM.from_pretrained(text)


def _describe(model: Any) -> str:
    if isinstance(model, SEEM):
        source = getattr(getattr(model, "load_report", None), "source", None)
        # A preset built with from_config: its name rebuilds it (exactly, for the seeded "tiny").
        return str(source) if source else str(model.config.name)
    return os.fspath(model)


def _is_main_process() -> bool:
    """Rank 0 by the launchers' environment (torchrun, accelerate, MPI); the Accelerator does not exist yet."""
    for name in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "LOCAL_RANK"):
        if name in os.environ:
            return int(os.environ[name]) == 0
    return True


def finetune(
    train: Any,
    eval: Any = None,
    model: str | os.PathLike | SEEM = DEFAULT_MODEL,
    strategy: str | AdapterPlacement | dict[str, Any] | None = "adapter-backbone/full-head",
    classes: Sequence[str] | None = None,
    config: TrainConfig | dict[str, Any] | str | os.PathLike | None = None,
    *,
    train_split: str | None = "train",
    eval_split: str | None = "validation",
    **overrides: Any,
) -> Run:
    """Fine-tune SEEM with an adapter placement on contract data; returns a :class:`~seemadapt.train.run.Run`.

    Args:
        train: training data: a ``datasets.Dataset``/``DatasetDict``, a folder (``save_to_disk``, Hub-style, COCO
            panoptic), a parquet file, a Hub dataset id, a registered detectron2 name, or a list of those (mixed,
            categories aligned by name).
        eval: optional evaluation data (same forms); evaluated every ``eval_every`` steps and at the end, and its
            best score keeps the best adapters in ``<output_dir>/best``. Its classes are aligned to the training
            classes by name.
        model: see :func:`load_model` (default: the official Focal-T SEEM v1 checkpoint on the Hub).
        strategy: one of the four thesis strategies (``"frozen-backbone/adapter-head"``,
            ``"adapter-backbone/adapter-head"``, ``"frozen-backbone/full-head"``, ``"adapter-backbone/full-head"``),
            an :class:`~seemadapt.adapters.AdapterPlacement`, or a dict of its fields. ``None`` keeps the
            placement a given model already carries (else the default strategy).
        classes: the class list and order to train with (default: the training data's); sources are aligned to it.
        config: a :class:`TrainConfig`, a dict of its fields, or a JSON/YAML file.
        train_split, eval_split: splits to take from DatasetDicts and Hub repos.
        **overrides: :class:`TrainConfig` fields, e.g. ``max_steps=500, lr=2e-4, output_dir="runs/mold"``.

    Prints the trainable-parameter table (main process) before training. The run's report folder
    (``run.report_dir``) gets ``results.md``, ``metrics.json``, ``history.json``, ``loss_curve.png`` and, with
    eval data, ``per_class.png``.
    """
    cfg = TrainConfig.resolve(config, **overrides)
    preflight(cfg)  # output folder, resume checkpoint, precision: fail before the model loads
    # Seeded so that random presets and the adapters' random initialisation repeat from run to run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        seem = load_model(model)
        try:
            report = adapter_report(seem)
        except ValueError:  # no placement yet
            report = apply_adapters(seem, resolve_placement(strategy))
        else:
            if strategy is not None and resolve_placement(strategy) != report.placement:
                raise ValueError(
                    "finetune: the model already carries a different adapter placement; pass strategy=None to "
                    "keep it, or pass a fresh model."
                )
    if _is_main_process():
        print(f"Adapter placement trains {report.num_trainable:,} of {report.num_parameters:,} parameters:")
        print(report.table(), flush=True)

    trainer = Trainer(
        seem,
        train,
        cfg,
        eval=eval,
        evaluator=evaluate,
        classes=classes,
        train_split=train_split,
        eval_split=eval_split,
        base_model=_describe(model),
    )
    return trainer.train()
