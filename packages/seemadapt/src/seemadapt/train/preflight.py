"""Checks made before a fine-tuning run loads anything or writes its first file.

A run that would fail after minutes (an output folder that is a file or read-only, a checkpoint to resume that is
not there, fp16 without a GPU) fails here at once, with the field, the value and the fix, and leaves nothing behind.
"""

from __future__ import annotations

import torch

from seemadapt.errors import ArgumentError
from seemadapt.train.checkpoints import find_checkpoint
from seemadapt.train.config import TrainConfig
from segcontract import check_output_dir

__all__ = ["preflight"]


def preflight(config: TrainConfig) -> None:
    """Every check of a run that needs no data and no model: output folder, resume checkpoint, precision."""
    check_output_dir(config.output_dir, "TrainConfig.output_dir")
    if config.resume_from not in (None, "latest"):
        # FileNotFoundError naming the field and the fix
        find_checkpoint(config.output_dir, config.resume_from)
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ArgumentError(
            "TrainConfig.mixed_precision='fp16' needs a CUDA GPU (fp16 autocast with a gradient scaler); on this "
            "CPU-only machine use 'bf16', 'no' or 'auto'."
        )
