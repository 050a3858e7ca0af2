"""Checks made before a fine-tuning run loads anything or writes its first file.

A run that would fail after minutes (an output folder that is a file or read-only, a checkpoint to resume that is
not there, fp16 without a GPU) fails here at once, with the field, the value and the fix, and leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from seemadapt.errors import ArgumentError, OutputPathError
from seemadapt.train.checkpoints import find_checkpoint
from seemadapt.train.config import TrainConfig

__all__ = ["check_output_dir", "preflight"]


def check_output_dir(path: str | os.PathLike, field: str = "TrainConfig.output_dir") -> Path:
    """``path`` as a folder that can be created or written; :class:`OutputPathError` naming ``field`` if not.

    Nothing is created: the nearest existing folder above ``path`` is checked for write access."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{field}={str(path)!r} is a file; give a folder (new or existing).")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(
            f"{field}={str(path)!r} cannot be created: {str(existing)!r} is a file; give a folder path."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"{field}={str(path)!r} is not writable ({str(existing)!r} is read-only for this user); "
            "give a folder you can write to."
        )
    return folder


def preflight(config: TrainConfig) -> None:
    """Every check of a run that needs no data and no model: output folder, resume checkpoint, precision."""
    check_output_dir(config.output_dir)
    if config.resume_from not in (None, "latest"):
        # FileNotFoundError naming the field and the fix
        find_checkpoint(config.output_dir, config.resume_from)
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ArgumentError(
            "TrainConfig.mixed_precision='fp16' needs a CUDA GPU (fp16 autocast with a gradient scaler); on this "
            "CPU-only machine use 'bf16', 'no' or 'auto'."
        )
