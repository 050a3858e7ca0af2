"""The training run that the step-time benchmarks share (``bench_strategies.py``, ``profile_train_step.py``).

256 px images, batch 2, a log line after every step and no evaluation or checkpoint, so that every step is one
optimizer step that can be timed; 8 synthetic contract images are enough for that.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import datasets

from seemadapt.testing import make_contract_dataset
from seemadapt.train import TrainConfig

try:
    from seemadapt.train.config import QUIET_RUN
except ImportError:  # a checkout before c540a9f, timed by `profile_train_step.py --compare` (e.g. 4b40bb2)
    QUIET_RUN = {"num_workers": 0, "tracker": None, "progress": False, "eval_every": 0, "save_every": 0}

IMAGE_SIZE = 256


def step_timing_config(steps: int, workdir: str, run_name: str, mixed_precision: str = "no") -> TrainConfig:
    """``steps`` optimizer steps writing under ``workdir/run_name`` (the data cache is shared in ``workdir``)."""
    return TrainConfig(
        max_steps=steps,
        batch_size=2,
        image_size=IMAGE_SIZE,
        log_every=1,
        **QUIET_RUN,
        output_dir=os.path.join(workdir, run_name),
        mixed_precision=mixed_precision,
        cache_dir=os.path.join(workdir, "cache"),
    )


def step_timing_dataset(classes: Sequence[str]) -> datasets.Dataset:
    """8 synthetic contract images of ``classes`` at the benchmark size (seeded)."""
    return make_contract_dataset(8, size=(IMAGE_SIZE, IMAGE_SIZE), classes=list(classes), seed=0)
