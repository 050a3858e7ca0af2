"""The training loop: SEEM + adapters + SEEM's losses on accelerate (one process, DDP, mixed precision).

One optimizer step = ``grad_accum`` micro-batches; each micro-batch is::

    mapper dicts -> SEEM.forward_train(images, class names, grounding texts)   # through the DDP wrapper
                 -> targets (labels, masks padded to the padded input, grounding embeddings from the frozen
                    text encoder) -> SEEMCriterion -> NaN/inf guard -> accelerator.backward

then gradient-norm clipping, the optimizer and the scheduler. What keeps it fast and correct:

* **Class prompts come from a cache.** The text encoder is frozen, so every (class, template) embedding is computed
  once per class list and each step draws one template per class from that cache
  (:meth:`~seemadapt.model.language.LanguageEncoder.class_embeddings`, mode ``"train"``). The official loop encoded
  every class prompt on every step, which was most of its step time. The trainer refuses a trainable text encoder.
* **Frozen parts stay outside autograd.** Parameters that do not train have ``requires_grad=False``; autograd
  records nothing for ops none of whose inputs require grad, so a frozen backbone and pixel decoder run without a
  graph (no saved activations) while backbone adapters still get gradients through the frozen blocks.
  :func:`~seemadapt.adapters.set_train_mode` replaces ``model.train()`` (frozen parts in eval mode: no stochastic
  depth or dropout where nothing can adapt to it).
* **Everything random is a function of the seed and the step**: data order and augmentations (per sample), the
  prompt templates and the loss points (per step and process), so a resumed run repeats the uninterrupted one.
  accelerate's ``save_state``/``load_state`` restores model, optimizer, scheduler, gradient scaler and RNGs; the
  trainer adds the step counter, the history and the best score (``trainer_state.json``, written last, marks a
  checkpoint complete). Checkpoints hold only the trained and adapter weights, not the frozen base.
* **The data loader shards itself** (:mod:`seemadapt.train.loader`).
* **On CPU, freed memory stays in the process** (:mod:`seemadapt.heap`): glibc would return each step's
  large tensors to the kernel and fault them in again as zeroed pages at the next step (5-10% of a CPU step).

The parts live in their own modules: :mod:`~seemadapt.train.step` (losses and guards of one micro-batch),
:mod:`~seemadapt.train.targets`, :mod:`~seemadapt.train.checkpoints` (state, resume, saved weights),
:mod:`~seemadapt.train.eval_hook` (evaluation during training) and :mod:`~seemadapt.train.loader`.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, is_wandb_available, set_seed
from tqdm.auto import tqdm

from seemadapt.adapters import AdapterReport, adapter_report, adapter_state_dict, set_train_mode
from seemadapt.data import EpochDataset, SEEMTrainMapper, class_names_of, load_source, mix, register
from seemadapt.data.register import registered_thing_classes
from seemadapt.detectron2_compat import DatasetCatalog, MetadataCatalog
from seemadapt.heap import freed_memory_kept
from seemadapt.model.seem import SEEM
from seemadapt.train.accelerator_state import release_precision
from seemadapt.train.checkpoint_files import verify_checkpoint
from seemadapt.train.checkpoints import (
    BEST_DIR,
    CHECKPOINTS,
    STATE_FILE,
    CheckpointWeights,
    TrainState,
    find_checkpoint,
    save_checkpoint,
)
from seemadapt.train.config import TrainConfig
from seemadapt.train.criterion import SEEMCriterion
from seemadapt.train.eval_hook import Evaluator, flatten_metrics, record_evaluation
from seemadapt.train.loader import train_batches
from seemadapt.train.optim import LRSchedule, build_optimizer, build_scheduler, match_state_layout
from seemadapt.train.preflight import preflight
from seemadapt.train.run import Run, save_adapter_folder
from seemadapt.train.step import (
    NonFiniteLossError,
    check_finite_loss,
    check_grad_norm,
    compute_losses,
    term_totals,
)
from seemadapt.train.targets import build_targets

__all__ = ["NonFiniteLossError", "TrainState", "Trainer", "build_targets", "find_checkpoint"]

REPORT_DIR = "report"


class Trainer:
    """Fine-tunes a SEEM model whose adapter placement is already applied.

    Args:
        model: a :class:`~seemadapt.model.seem.SEEM` after :func:`~seemadapt.adapters.apply_adapters`.
        train: training data: a registered detectron2 dataset name, or anything
            :func:`seemadapt.data.register` accepts (Dataset, folder, Hub id, list of sources to mix).
        config: the run's :class:`TrainConfig`.
        eval: optional evaluation data (anything ``evaluator`` accepts); its categories are aligned to the training
            classes by name.
        evaluator: evaluates the model on ``eval`` (needed with ``eval``; :func:`seemadapt.finetune` passes
            :func:`seemadapt.evaluation.evaluate`), called as ``evaluator(model, data, classes=..., batch_size=...,
            device=..., tasks=..., image_size=..., progress=False)``.
        classes: the class list (order = contiguous ids); default: the training data's.
        train_split, eval_split: splits to take from DatasetDicts / Hub repos.
        base_model: a description of the starting weights, recorded with saved adapters.
    """

    def __init__(
        self,
        model: SEEM,
        train: Any,
        config: TrainConfig | None = None,
        *,
        eval: Any = None,
        evaluator: Evaluator | None = None,
        classes: Sequence[str] | None = None,
        train_split: str | None = "train",
        eval_split: str | None = "validation",
        base_model: str | None = None,
    ) -> None:
        self.config = config if config is not None else TrainConfig()
        self.model = model
        self.report: AdapterReport = adapter_report(model)
        self.config = self.config.with_default_lr(self.report.placement)
        text = [n for n in self.report.trainable if self.report.group_of.get(n) == "language encoder"]
        if text or any(p.requires_grad for p in model.language_encoder.parameters()):
            raise ValueError(
                "Trainer: the text encoder must stay frozen (its class-prompt embeddings are cached); "
                "re-apply the placement to a fresh model without selecting 'sem_seg_head.predictor.lang_encoder'."
            )
        if eval is not None and evaluator is None:
            raise ValueError(
                "Trainer: eval data needs an evaluator, e.g. Trainer(..., eval=data, evaluator=seemadapt.evaluate)."
            )
        self.base_model = base_model or getattr(model.config, "name", "seem")
        self._train_source = train
        self._eval_source = eval
        self._evaluator = evaluator
        self._classes_arg = list(classes) if classes is not None else None
        self.train_split = train_split
        self.eval_split = eval_split
        self.state = TrainState()
        self.output_dir = Path(self.config.output_dir)
        self.report_dir = self.output_dir / REPORT_DIR
        self.eval_result: Any = None
        self.last_metrics: dict[str, float] = {}
        self._last_eval_step: int | None = None
        self._accelerator: Any = None

    # ------------------------------------------------------------------ set-up

    def _make_accelerator(self) -> Accelerator:
        config = self.config
        if config.tracker == "wandb" and not is_wandb_available():
            raise ImportError(
                "TrainConfig.tracker='wandb' needs the wandb package (pip install wandb); "
                "or use tracker='tensorboard' or tracker=None."
            )
        project = ProjectConfiguration(
            project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
        )
        precision = config.resolved_mixed_precision()
        release_precision(precision)
        return Accelerator(
            mixed_precision=precision,
            gradient_accumulation_steps=config.grad_accum,
            cpu=not torch.cuda.is_available(),
            log_with=config.tracker,
            project_config=project,
            step_scheduler_with_optimizer=False,
            # Interactive-only decoder parameters train with the "full head" but get no gradient without spatial
            # prompts; DDP must be told that some parameters may go unused.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )

    def _prepare_data(self, accelerator: Any) -> None:
        config = self.config
        source = self._train_source
        if isinstance(source, str) and source in DatasetCatalog.list():
            name = source
        else:
            source = self._aligned(source, self.train_split)
            with accelerator.main_process_first():
                name = register(
                    source,
                    "seemadapt_train",
                    split=self.train_split,
                    cache_dir=self._cache_dir(),
                    overwrite=True,
                )
        self.train_name = name
        names = list(MetadataCatalog.get(name).stuff_classes)
        if self._classes_arg is not None and names != self._classes_arg:
            raise ValueError(
                f"Trainer: classes {self._classes_arg} differ from the registered dataset's {names}; pass the "
                "data itself (not a registered name) to have it aligned to the classes."
            )
        self.classes = names
        self.thing_classes = registered_thing_classes(name)
        if self._eval_source is not None:
            self.eval_data = self._aligned(self._eval_source, self.eval_split, names)
        else:
            self.eval_data = None
        records = DatasetCatalog.get(name)
        self.num_samples = len(records)
        self.mapper = SEEMTrainMapper(
            image_size=config.image_size,
            min_scale=config.min_scale,
            max_scale=config.max_scale,
            flip=config.flip,
            max_grounding=config.max_grounding,
            class_names=names,
            seed=config.seed,
        )
        self._records = EpochDataset(records)

    def _cache_dir(self) -> str | None:
        if self.config.cache_dir is None:
            return None
        return str(Path(self.config.cache_dir) / "datasets")

    def _aligned(self, source: Any, split: str | None, classes: Sequence[str] | None = None) -> Any:
        """``source`` loaded as a contract Dataset whose class order is ``classes`` (or the classes argument)."""
        wanted = list(classes) if classes is not None else self._classes_arg
        dataset = load_source(source, split=split)
        if wanted is not None and class_names_of(dataset) != wanted:
            dataset = mix([dataset], split=split, classes=wanted, cache_dir=self.config.cache_dir)
        return dataset

    def _loader(self, start_step: int, num_processes: int) -> Iterator[list[dict]]:
        return train_batches(self._records, self.mapper, self.config, start_step)

    def _checkpoint_keys(self) -> set[str]:
        return set(adapter_state_dict(self.model))

    # ------------------------------------------------------------------ the run

    def train(self) -> Run:
        """Run the training; returns a :class:`~seemadapt.train.run.Run`."""
        config = self.config
        preflight(config)
        accelerator = self._make_accelerator()
        self._accelerator = accelerator
        set_seed(config.seed)
        self._prepare_data(accelerator)
        num_processes = accelerator.num_processes
        self.total_steps = config.total_steps(self.num_samples, num_processes)
        self.steps_per_epoch = config.steps_per_epoch(self.num_samples, num_processes)
        eval_every = self.steps_per_epoch if config.eval_every is None else config.eval_every
        save_every = self.steps_per_epoch if config.save_every is None else config.save_every

        model = self.model
        optimizer = build_optimizer(model, config, self.report.group_of)
        scheduler = build_scheduler(optimizer, config, self.total_steps)
        criterion = SEEMCriterion(config.criterion)
        prepared, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.model = accelerator.unwrap_model(prepared)
        criterion.to(accelerator.device)
        set_train_mode(self.model, True)
        CheckpointWeights(self._checkpoint_keys).register(accelerator)
        if config.resume_from is not None:
            self._resume(accelerator, optimizer, scheduler)
        if config.tracker is not None:
            accelerator.init_trackers(config.project_name, config=_tracker_config(config))
        # On CPU each step would otherwise fault its large tensors in again (see seemadapt/heap.py).
        with freed_memory_kept(accelerator.device):
            try:
                self._fit(accelerator, prepared, optimizer, scheduler, criterion, eval_every, save_every)
                # e.g. resumed from the final checkpoint: still report the scores
                if self.eval_data is not None:
                    self._evaluate(accelerator)
            finally:
                # Not accelerator.end_training(): it also destroys the process group, which the caller may still use.
                for tracker in accelerator.trackers:
                    tracker.finish()
        set_train_mode(self.model, False)
        return self._finish(accelerator)

    def _resume(self, accelerator: Any, optimizer: Any, scheduler: Any) -> None:
        """Load the checkpoint ``config.resume_from`` names (if any) into the prepared objects and the state."""
        config = self.config
        checkpoint = find_checkpoint(self.output_dir, config.resume_from)
        if checkpoint is None:
            accelerator.print(f"No checkpoint in {self.output_dir / CHECKPOINTS}; starting from step 0.")
            return
        saved = verify_checkpoint(checkpoint, STATE_FILE, accelerator.num_processes)
        accelerator.load_state(str(checkpoint), strict=False)
        match_state_layout(optimizer)
        self.state = TrainState.from_dict(saved)
        # The current config decides the run length (a resumed run may be extended).
        for schedule in scheduler.scheduler.lr_lambdas:
            if isinstance(schedule, LRSchedule):
                schedule.__dict__.update(LRSchedule(config, self.total_steps).__dict__)
        accelerator.step = self.state.step * config.grad_accum
        accelerator.print(f"Resumed from {checkpoint} at step {self.state.step}.")

    def _fit(self, accelerator, prepared, optimizer, scheduler, criterion, eval_every, save_every) -> None:
        config = self.config
        params = [p for p in prepared.parameters() if p.requires_grad]
        batches = self._loader(self.state.step, accelerator.num_processes)
        bar = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc="fine-tuning",
            disable=not (accelerator.is_main_process and config.progress),
            dynamic_ncols=True,
        )
        window: list[dict[str, float]] = []
        start = self.state.step
        while self.state.step < self.total_steps:
            record = self._optimizer_step(
                accelerator, prepared, optimizer, scheduler, criterion, params, batches
            )
            window.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            done = self.state.step
            last = done == self.total_steps
            if done % config.log_every == 0 or last or done == start + 1:
                self._log(accelerator, window, scheduler)
                window = []
            if self.eval_data is not None and ((eval_every and done % eval_every == 0) or last):
                self._evaluate(accelerator)
            if (save_every and done % save_every == 0) or last:
                save_checkpoint(accelerator, self.output_dir, self.state, config.save_total_limit)
        bar.close()

    def _optimizer_step(
        self, accelerator, prepared, optimizer, scheduler, criterion, params, batches
    ) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; returns its log record (losses, times)."""
        config = self.config
        step = self.state.step
        began = time.perf_counter()
        totals: dict[str, float] = {}
        loss_sum = 0.0
        grad_norm = None
        data_time = 0.0
        for micro in range(config.grad_accum):
            fetched = time.perf_counter()
            batch = next(batches)
            data_time += time.perf_counter() - fetched
            with accelerator.accumulate(prepared):
                losses = self._losses(accelerator, prepared, criterion, batch, step, micro)
                loss = criterion.total(losses)
                check_finite_loss(accelerator, loss, losses, batch, step, micro, self.output_dir)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.clip > 0:
                    grad_norm = accelerator.clip_grad_norm_(params, config.clip)
                    check_grad_norm(config, grad_norm, step)
                optimizer.step()
                if accelerator.sync_gradients and not optimizer.step_was_skipped:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += float(loss.detach()) / config.grad_accum
            for name, value in term_totals(losses).items():
                totals[name] = totals.get(name, 0.0) + value / config.grad_accum
        self.state.step = step + 1
        record = {"loss": loss_sum, **totals, "time": time.perf_counter() - began, "data_time": data_time}
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        return record

    def _losses(
        self, accelerator, prepared, criterion, batch, step: int, micro: int
    ) -> dict[str, torch.Tensor]:
        return compute_losses(accelerator, prepared, criterion, batch, self.classes, self.config, step, micro)

    # ------------------------------------------------------------------ logging, evaluation, saving

    def _log(self, accelerator, window: list[dict[str, float]], scheduler) -> None:
        keys = dict.fromkeys(k for record in window for k in record)
        values = {k: statistics.fmean(r[k] for r in window if k in r) for k in keys}
        if accelerator.num_processes > 1:
            names = sorted(k for k in values if k.startswith("loss"))
            packed = torch.tensor([values[k] for k in names], device=accelerator.device, dtype=torch.float64)
            packed = accelerator.reduce(packed, reduction="mean")
            values.update(dict(zip(names, packed.tolist())))
        values["lr"] = float(scheduler.get_last_lr()[0])
        record = {"step": self.state.step, **values}
        self.state.history.append(record)
        if self.config.tracker is not None:
            accelerator.log({f"train/{k}": v for k, v in values.items()}, step=self.state.step)

    def _evaluate(self, accelerator) -> None:
        step = self.state.step
        if self._last_eval_step == step:
            return
        self._last_eval_step = step
        if accelerator.is_main_process:
            config = self.config
            result = self._evaluator(
                self.model,
                self.eval_data,
                classes=self.classes,
                batch_size=config.eval_batch_size,
                device=accelerator.device,
                tasks=config.eval_tasks,
                image_size=config.eval_image_size,
                progress=False,
            )
            set_train_mode(self.model, True)
            metrics = flatten_metrics(getattr(result, "metrics", result))
            self.eval_result = result
            self.last_metrics = metrics
            if record_evaluation(self.state, step, metrics, config.best_metric):
                self._save_adapters(self.output_dir / BEST_DIR, metrics)
            if config.tracker is not None:
                accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
            summary = ", ".join(f"{k}={v:.4f}" for k, v in list(metrics.items())[:6])
            accelerator.print(f"step {step}: {summary}")
        accelerator.wait_for_everyone()

    def _save_adapters(self, folder: Path, metrics: dict[str, float] | None = None) -> Path:
        """Adapter weights + placement (+ metrics) into ``folder`` via :func:`seemadapt.hub.save_adapters`."""
        return save_adapter_folder(
            self.model,
            folder,
            placement=self.report.placement,
            base_model=self.base_model,
            classes=self.classes,
            thing_classes=self.thing_classes,
            metrics=metrics,
            config=self.config.to_dict(),
            datasets=self._dataset_names(),
        )

    def _dataset_names(self) -> list[Any]:
        """The training sources that are names (Hub ids end up in the model card)."""
        sources = self._train_source if isinstance(self._train_source, list | tuple) else [self._train_source]
        return [s for s in sources if isinstance(s, str)]

    def _finish(self, accelerator) -> Run:
        run = Run(
            model=self.model,
            placement=self.report.placement,
            classes=list(self.classes),
            thing_classes=list(self.thing_classes),
            metrics=dict(self.last_metrics),
            history=list(self.state.history),
            eval_history=list(self.state.eval_history),
            config=self.config,
            base_model=self.base_model,
            output_dir=self.output_dir,
            report_dir=self.report_dir,
            best_step=self.state.best_step,
            best_score=self.state.best_score,
            best_dir=(self.output_dir / BEST_DIR) if self.state.best_step is not None else None,
            eval_result=self.eval_result,
            report=self.report,
            datasets=self._dataset_names(),
        )
        if accelerator.is_main_process:
            run.write_report()
        accelerator.wait_for_everyone()
        return run


def _tracker_config(config: TrainConfig) -> dict[str, Any]:
    """Scalars only (TensorBoard's hparams accept int, float, str, bool)."""
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}{k}.")
        elif value is None:
            flat[prefix[:-1]] = "None"
        elif isinstance(value, bool | int | float | str):
            flat[prefix[:-1]] = value
        else:
            flat[prefix[:-1]] = json.dumps(value)

    walk(config.to_dict(), "")
    return flat
