"""Checks made before a generation draws its first image, and the translation of model-loading failures.

A device without its hardware, or a model id that cannot be found, would otherwise surface as torch's driver error
or diffusers' "does not appear to have a file named model_index.json" from deep inside the loader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from diffsynth.errors import ArgumentError, ModelNotFoundError
from diffsynth.pipelines import TINY_MODELS

__all__ = ["check_device", "model_load_error"]


def check_device(device: Any, field: str = "device") -> None:
    """Raise :class:`ArgumentError` naming ``field`` when ``device`` names hardware this machine does not have."""
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ArgumentError(
            f"{field}={device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:0'."
        ) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(
            f"{field}={device!r}: this machine has no usable CUDA GPU (torch.cuda.is_available() is False); use "
            "device='cpu' or leave device unset."
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ArgumentError(f"{field}={device!r}: Apple MPS is not available here; use device='cpu'.")


def model_load_error(model: Any, error: OSError, field: str = "model") -> OSError:
    """A :class:`ModelNotFoundError` that says why ``model`` could not be loaded and what to give instead."""
    if not isinstance(model, str | os.PathLike):
        return error
    text = os.fspath(model)
    tiny = ", ".join(repr(name) for name in TINY_MODELS)
    if Path(text).expanduser().is_dir():
        reason = f"the folder {text!r} is not a diffusers pipeline folder (no readable model_index.json)"
    elif text.lower().startswith("tiny"):
        reason = f"{text!r} is not one of the offline tiny models ({tiny})"
    elif os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        reason = f"{text!r} is not in the local Hub cache and HF_HUB_OFFLINE is set"
    else:
        reason = (
            f"{text!r} was not found on the Hub or in the local cache (a typo, a private repo, or no network)"
        )
    return ModelNotFoundError(
        f"{field}={text!r} cannot be loaded: {reason}. Give a Hub id such as "
        f"'stable-diffusion-v1-5/stable-diffusion-v1-5', a local pipeline folder, or one of {tiny}. "
        f"({type(error).__name__}: {str(error).splitlines()[0][:160]})"
    )
