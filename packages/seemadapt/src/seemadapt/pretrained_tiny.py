"""A "pretrained" SEEM-tiny: the ``tiny`` preset trained for about a minute of CPU on toy scenes, cached on disk.

Fine-tuning a real SEEM adapts a model that already segments things to new classes. The random ``tiny`` preset
cannot show that: it segments nothing. :func:`pretrained_tiny` trains every part of it except the text encoder
(backbone, pixel decoder, decoder) on :func:`seemadapt.toyworld.make_toy_scenes` with the generic classes of
:data:`PRETRAIN_CLASSES` (discs, boxes, triangles, rings, planks and sponges on sky and floor), the way SEEM is
pretrained on COCO, then caches the weights. Fine-tuning it on other toy classes (the quick-start's mold, stain,
pipe and wall) is then a small-scale copy of the real method. It is a test and demo fixture, not a model.

The build is deterministic on a given machine (fixed seeds, one CPU thread; mixed precision as
``TrainConfig.mixed_precision="auto"`` picks it, since one process keeps one precision) and cached under ``<cache>/pretrained-tiny/<key>``, where
``key`` hashes the recipe, the torch version and seemadapt's own source code, so a cache built by other code is never
used; the folder is written to a temporary name and renamed into place (concurrent builders do not see half a
model). Cache root: ``cache_dir``, else ``$SEEMADAPT_PRETRAINED_TINY``, else the seemadapt cache
(:func:`seemadapt.data.register.default_cache_dir`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from seemadapt.adapters import AdapterPlacement
from seemadapt.data.cache import default_cache_dir
from seemadapt.finetuning import finetune
from seemadapt.model.seem import SEEM
from seemadapt.toyworld import make_toy_scenes
from seemadapt.train.config import QUIET_RUN
from seemadapt.train.run import Run

__all__ = [
    "PRETRAIN_CLASSES",
    "PRETRAIN_STUFF",
    "TOY_STEPS",
    "PretrainRecipe",
    "finetune_toy",
    "pretrained_tiny",
    "pretrained_tiny_path",
]

PRETRAIN_CLASSES = ("disc", "box", "triangle", "ring", "plank", "sponge", "sky", "floor")
PRETRAIN_STUFF = ("sky", "floor")
#: Everything but the text encoder trains (SEEM keeps its text encoder frozen).
TRAIN_ALL = {"train_full": ["backbone", "sem_seg_head.pixel_decoder", "sem_seg_head.predictor"]}
ENV_CACHE = "SEEMADAPT_PRETRAINED_TINY"
#: Optimizer steps of the toy fine-tuning recipe (:func:`finetune_toy`) that the learning tests and benchmarks use.
TOY_STEPS = 80


@dataclass(frozen=True)
class PretrainRecipe:
    """How the pretrained tiny model is made (every field is part of the cache key)."""

    num_images: int = 64
    size: int = 96
    steps: int = 300
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0


def _source_digest() -> str:
    """Hash of seemadapt's Python sources: a change to the model, the loss or the data code rebuilds the cache."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def pretrained_tiny_path(
    recipe: PretrainRecipe = PretrainRecipe(), cache_dir: str | os.PathLike | None = None
) -> Path:
    """Where the model of ``recipe`` is (or would be) cached."""
    key = json.dumps(
        {"recipe": asdict(recipe), "torch": torch.__version__, "source": _source_digest()}, sort_keys=True
    )
    root = Path(cache_dir or os.environ.get(ENV_CACHE) or default_cache_dir() / "pretrained-tiny")
    return root / hashlib.sha256(key.encode()).hexdigest()[:16]


def _train(recipe: PretrainRecipe, workdir: Path) -> SEEM:
    data = make_toy_scenes(
        recipe.num_images,
        classes=PRETRAIN_CLASSES,
        stuff=PRETRAIN_STUFF,
        size=(recipe.size, recipe.size),
        seed=recipe.seed,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic on every machine size
    try:
        run = _quiet_finetune(
            data,
            "tiny",
            TRAIN_ALL,
            workdir / "run",
            cache_dir=str(workdir / "data"),
            max_steps=recipe.steps,
            batch_size=recipe.batch_size,
            image_size=recipe.size,
            lr=recipe.lr,
            seed=recipe.seed,
        )
    finally:
        torch.set_num_threads(threads)
    return run.model


def _quiet_finetune(train: Any, model: SEEM | str, strategy: Any, output_dir: Path, **overrides: Any) -> Run:
    """:func:`finetune` as a small CPU run with no side work (:data:`~seemadapt.train.config.QUIET_RUN`)."""
    return finetune(
        train,
        model=model,
        strategy=strategy,
        log_every=overrides["max_steps"],
        output_dir=str(output_dir),
        **QUIET_RUN,
        **overrides,
    )


def finetune_toy(
    base: SEEM,
    train: Any,
    strategy: str | AdapterPlacement | dict[str, Any],
    *,
    steps: int = TOY_STEPS,
    seed: int = 0,
    workdir: str | os.PathLike | None = None,
    **overrides: Any,
) -> Run:
    """Fine-tune a copy of ``base`` on toy ``train`` scenes: the one recipe of the learning tests and benchmarks.

    ``steps`` steps of batch 4 at 96 px, at the strategy's default lr unless ``overrides`` (``TrainConfig`` fields)
    say otherwise; ``strategy="full"`` trains everything but the text encoder (:data:`TRAIN_ALL`). The run's files
    go to ``workdir`` (default: a temporary folder, removed on return; the model stays in memory); the training
    set is registered under ``cache_dir`` (an override; default: the seemadapt cache, so that later runs on the
    same scenes reuse it).
    """
    strategy = TRAIN_ALL if strategy == "full" else strategy
    settings = {"max_steps": steps, "batch_size": 4, "image_size": 96, "seed": seed, **overrides}
    if workdir is not None:
        return _quiet_finetune(train, copy.deepcopy(base), strategy, Path(workdir) / "run", **settings)
    with tempfile.TemporaryDirectory(prefix="seemadapt-toy-") as tmp:
        return _quiet_finetune(train, copy.deepcopy(base), strategy, Path(tmp), **settings)


def pretrained_tiny(
    cache_dir: str | os.PathLike | None = None,
    *,
    recipe: PretrainRecipe = PretrainRecipe(),
    rebuild: bool = False,
) -> SEEM:
    """SEEM-tiny pretrained on toy scenes of :data:`PRETRAIN_CLASSES` (built on first use, then loaded from cache).

    A fresh model each call (adapters may be applied to it). ``rebuild=True`` trains again even if cached.
    """
    folder = pretrained_tiny_path(recipe, cache_dir)
    if rebuild or not (folder / "model.safetensors").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".build-") as tmp:
            model = _train(recipe, Path(tmp))
            staged = Path(tmp) / "model"
            _save_plain(model, staged)
            if rebuild and folder.exists():
                shutil.rmtree(folder)
            try:
                os.replace(staged, folder)
            except OSError:  # another process won the race: its model is the same one
                if not (folder / "model.safetensors").is_file():
                    raise
    return SEEM.from_pretrained(folder)


def _save_plain(model: SEEM, folder: Path) -> None:
    """Save ``model``'s trained weights as a plain SEEM checkpoint (no placement state) in ``folder``."""
    plain = SEEM.from_config(model.config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(folder)
