"""The closed loop: generate synthetic data -> fine-tune SEEM -> evaluate -> plan the next round from the weak classes.

Each round spends ``budget`` synthetic images. Round 1 follows the base model's per-class IoU (``baseline``, evaluated
as round 0) or a uniform plan; round ``k`` follows round ``k-1``'s IoU through :func:`diffsynth.plan_from_metrics`, so
the classes the model segments worst get more, and more varied, images. Every round keeps its artefacts::

    output_dir/
        loop_config.json                 the configuration (a resumed run must match it)
        round_0/metrics.json, DONE       baseline evaluation (with baseline=True)
        round_k/plan.json                the generation plan and why (IoU, shares, weak classes)
        round_k/dataset/                 the synthetic data (save_to_disk + categories.json)
        round_k/train/                   fine-tuning checkpoints and report
        round_k/adapters/                the adapter weights (seemadapt.load_adapters / load_model)
        round_k/eval/                    results.json, results.md, per-class plots
        round_k/metrics.json, DONE       per-class IoU and all metrics; DONE is written last
        iou_over_rounds.png, summary.json, summary.md

A run interrupted anywhere resumes where it stopped (``resume=True``): finished rounds (``DONE``) are skipped, a
round's finished dataset and adapters are reused, and an interrupted fine-tuning resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from seemadapt.plots import plot_iou_over_rounds
from segloop.config import LoopConfig, config_differences
from segloop.records import CONFIG_FILE, LoopResult, RoundResult, nan_to_none, write_json
from segloop.rounds import Rounds

__all__ = ["run_loop"]


def _claim_folder(out: Path, record: dict[str, Any], resume: bool) -> None:
    """Write the configuration into ``out``; a loop already there must have the same one (and ``resume``)."""
    saved = out / CONFIG_FILE
    if saved.is_file():
        if not resume:
            raise FileExistsError(
                f"output_dir={str(out)!r} already holds a loop; pass resume=True to continue it, or choose an empty "
                "folder."
            )
        diffs = config_differences(json.loads(saved.read_text(encoding="utf-8")), record)
        if diffs:
            raise ValueError(
                f"output_dir={str(out)!r} holds a loop with another configuration; use a new folder or the same "
                "configuration:\n  " + "\n  ".join(diffs)
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json(saved, record)


def _summarise(out: Path, finished: Sequence[RoundResult]) -> None:
    result = LoopResult(list(finished), out)
    plot_iou_over_rounds(
        [r.iou for r in finished], out / "iou_over_rounds.png", title="per-class IoU over rounds"
    )
    rounds = [
        {"round": r.round, "iou": nan_to_none(r.iou), "miou": nan_to_none({"m": r.miou})["m"]}
        for r in finished
    ]
    write_json(out / "summary.json", {"rounds": rounds})
    (out / "summary.md").write_text("# Closed loop\n\n" + result.table() + "\n", encoding="utf-8")


def run_loop(
    config: LoopConfig | Mapping[str, Any] | str | os.PathLike,
    rounds: int,
    output_dir: str | os.PathLike,
    resume: bool = True,
    *,
    pipeline: Any = None,
    progress: bool = True,
) -> LoopResult:
    """Run ``rounds`` rounds of generate -> fine-tune -> evaluate into ``output_dir`` (see the module docstring).

    Args:
        config: a :class:`LoopConfig`, a dict of its fields, or a YAML/JSON file.
        rounds: rounds to have finished when this returns (a resumed run only runs the missing ones; a larger
            number extends a finished loop).
        output_dir: where every round's dataset, adapters and metrics go.
        resume: continue a loop found in ``output_dir`` (its configuration must match); ``False`` refuses a folder
            that already holds a loop.
        pipeline: an already loaded diffusers pipeline to generate with (default: load ``generate.model`` once).
        progress: progress bars.
    Returns the :class:`LoopResult` of every finished round; ``output_dir/iou_over_rounds.png`` plots them.
    """
    cfg = LoopConfig.resolve(config)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"run_loop: rounds must be an int >= 1, got {rounds!r}.")
    out = Path(output_dir)
    _claim_folder(out, cfg.to_json(), resume)
    loop = Rounds(cfg, out, pipeline, progress)
    finished: list[RoundResult] = []
    previous = None
    if cfg.baseline:
        previous = loop.baseline()
        finished.append(previous)
    for index in range(1, rounds + 1):
        previous = loop.round(index, previous)
        finished.append(previous)
        _summarise(out, finished)
    return LoopResult(finished, out, out / "iou_over_rounds.png")
