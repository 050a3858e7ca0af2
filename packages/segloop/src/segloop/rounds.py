"""One round of the loop: plan (diffsynth) -> generate (diffsynth) -> fine-tune (seemadapt) -> evaluate (seemadapt).

Each step leaves its artefact in ``output_dir/round_k/`` and is skipped when that artefact is already complete, so
an interrupted round resumes where it stopped. Folders are written under a ``.tmp`` name and renamed into place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from diffsynth import GenerationPlan, categories_of, generate, load_pipeline, plan_from_metrics
from seemadapt import TrainConfig, evaluate, finetune, load_adapters
from seemadapt.finetuning import load_model
from segcontract import write_category_files
from segloop.config import LoopConfig, jsonable
from segloop.records import DONE, RoundResult, finish_round, read_round, write_json

__all__ = ["Rounds"]

#: ``LoopConfig.generate`` keys that choose how the pipeline is loaded, not how images are generated.
GENERATION_LOAD_KEYS = ("dtype", "torch_dtype", "device", "scheduler")


def _replace_dir(tmp: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


class Rounds:
    """Runs the rounds of one loop in ``out``; ``pipeline`` is the diffusers pipeline (loaded once, lazily)."""

    def __init__(self, config: LoopConfig, out: Path, pipeline: Any, progress: bool) -> None:
        self.config = config
        self.out = out
        self.pipeline = pipeline
        self.progress = progress

    # -- pieces ----------------------------------------------------------------------------------------
    def _train_config(self, folder: Path) -> TrainConfig:
        options = {"progress": self.progress, **self.config.finetune}
        return TrainConfig.resolve(None, **options, output_dir=str(folder / "train"), resume_from="latest")

    def _seed(self) -> int:
        return TrainConfig.resolve(None, **{**self.config.finetune, "output_dir": "unused"}).seed

    def _base_model(self, seed: int) -> Any:
        """The SEEM base exactly as ``finetune`` builds it (seeded, so random presets repeat)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return load_model(self.config.model)

    def _evaluate(self, model: Any) -> Any:
        options = {"progress": self.progress, **self.config.evaluate}
        result = evaluate(model, self.config.eval, **options)
        if result.semantic is None:
            raise ValueError(
                "the loop needs per-class IoU: LoopConfig.evaluate must keep the semantic task (tasks: [semantic])."
            )
        return result

    def _load_pipeline(self) -> Any:
        if self.pipeline is None:
            options = self.config.generate
            load = {k: options[k] for k in GENERATION_LOAD_KEYS if options.get(k) is not None}
            self.pipeline = load_pipeline(options.get("model", "tiny"), progress=self.progress, **load)
        return self.pipeline

    def _plan(self, previous: RoundResult | None) -> GenerationPlan:
        if previous is None:
            return GenerationPlan(
                {c: 1 for c in self.config.classes}, notes={"kind": "uniform", "reason": "no evaluation yet"}
            ).scaled(self.config.budget)
        plan = plan_from_metrics(
            previous.iou, self.config.budget, classes=self.config.classes, **self.config.plan
        )
        plan.notes["from_round"] = previous.round
        return plan

    def _dataset(self, folder: Path, index: int, plan: GenerationPlan) -> Path:
        """Generate the round's data into ``folder/dataset`` (atomically: a finished folder is reused)."""
        target = folder / "dataset"
        if (target / "dataset_info.json").is_file():
            return target
        options = {k: v for k, v in self.config.generate.items() if k not in (*GENERATION_LOAD_KEYS, "model")}
        data = generate(
            self.config.classes,
            plan.num_images,
            model=self._load_pipeline(),
            seed=self.config.seed + index,
            plan=plan,
            progress=self.progress,
            **options,
        )
        tmp = folder / "dataset.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        data.save_to_disk(os.fspath(tmp))
        write_category_files(categories_of(data), tmp)
        _replace_dir(tmp, target)
        return target

    def _train(self, folder: Path, index: int, sources: list[Any]) -> Any:
        """Fine-tune (resuming from the round's last checkpoint) and save the adapters; returns the model."""
        adapters = folder / "adapters"
        cfg = self._train_config(folder)
        if adapters.is_dir():  # renamed into place only once complete
            return load_adapters(self._base_model(cfg.seed), adapters)
        model: Any = self.config.model
        strategy: Any = self.config.strategy
        previous = self.out / f"round_{index - 1}" / "adapters"
        if self.config.warm_start and index > 1 and previous.is_dir():
            model, strategy = load_adapters(self._base_model(cfg.seed), previous), None
        run = finetune(
            train=list(self.config.train) + sources, eval=None, model=model, strategy=strategy, config=cfg
        )
        tmp = folder / "adapters.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        run.save(tmp)
        _replace_dir(tmp, adapters)
        return run.model

    # -- rounds ----------------------------------------------------------------------------------------
    def baseline(self) -> RoundResult:
        """Round 0: the base model's evaluation."""
        folder = self.out / "round_0"
        if (folder / DONE).is_file():
            return read_round(folder, 0)
        folder.mkdir(parents=True, exist_ok=True)
        result = self._evaluate(self._base_model(self._seed()))
        return finish_round(folder, 0, result, {"model": self.config.model, "baseline": True})

    def round(self, index: int, previous: RoundResult | None) -> RoundResult:
        """Round ``index`` >= 1, planned from ``previous`` (uniform without one)."""
        folder = self.out / f"round_{index}"
        if (folder / DONE).is_file():
            return read_round(folder, index)
        folder.mkdir(parents=True, exist_ok=True)
        plan = self._plan(previous)
        write_json(folder / "plan.json", plan.to_dict())
        dataset = self._dataset(folder, index, plan)
        rounds = range(1, index + 1) if self.config.accumulate else [index]
        sources = [str(self.out / f"round_{k}" / "dataset") for k in rounds if k != index] + [str(dataset)]
        model = self._train(folder, index, sources)
        result = self._evaluate(model)
        extra = {"plan": plan.to_dict(), "train_sources": [*map(jsonable, self.config.train), *sources]}
        return finish_round(folder, index, result, extra)
