"""One training micro-batch: the losses, their per-term totals and the guards against NaN/inf.

Everything random in a step is a function of the seed, the step, the micro-batch and the process
(:func:`seed_of`): the prompt templates, the spatial prompts and the loss points, so a resumed run repeats the
uninterrupted one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seemadapt.train.checkpoints import checkpoint_dirs
from seemadapt.train.config import TrainConfig
from seemadapt.train.spatial import prepare_spatial_training
from seemadapt.train.targets import build_targets

__all__ = [
    "NonFiniteLossError",
    "check_finite_loss",
    "check_grad_norm",
    "compute_losses",
    "non_finite_outputs",
    "seed_of",
    "term_totals",
]

_CHECKED_OUTPUTS = ("pred_logits", "pred_masks", "pred_gmasks", "pred_gtexts")


class NonFiniteLossError(FloatingPointError):
    """The loss (or the gradient norm) became NaN or infinite; the message names the terms and the step."""


def seed_of(*values: int) -> int:
    """A 63-bit seed from integers (seed, step, micro-batch, process): independent streams per combination."""
    return int(
        np.random.SeedSequence([int(v) & (2**63 - 1) for v in values]).generate_state(1, np.uint64)[0] >> 1
    )


def term_totals(losses: dict[str, Tensor]) -> dict[str, float]:
    """Weighted losses summed over the prediction layers, by term (``loss_mask_ce`` = sum of ``loss_mask_ce_*``)."""
    values = torch.stack([v.detach().float().reshape(()) for v in losses.values()]).cpu().tolist()  # one sync
    totals: dict[str, float] = {}
    for name, value in zip(losses, values):
        base = name.rsplit("_", 1)[0]
        totals[base] = totals.get(base, 0.0) + value
    return totals


def non_finite_outputs(outputs: dict[str, Any]) -> list[str]:
    """Names of prediction tensors (final and auxiliary layers) holding NaN or inf.

    Each tensor is reduced to its minimum and maximum in one pass (NaN propagates to both, an infinity is an
    extreme) and all extremes are tested with one host sync: ``isfinite(t).all()`` made four full-size passes per
    tensor, about 60 ms of a Focal-T step on the CPU.
    """
    layers = [("", outputs), *((f"aux {i} ", aux) for i, aux in enumerate(outputs.get("aux_outputs") or []))]
    names, extremes = [], []
    for prefix, layer in layers:
        for key in _CHECKED_OUTPUTS:
            value = layer.get(key)
            if isinstance(value, Tensor) and value.numel():
                names.append(f"{prefix}{key}")
                extremes.append(torch.stack(torch.aminmax(value.detach())).float())
    if not names:
        return []
    finite = torch.isfinite(torch.stack(extremes)).all(dim=1).tolist()
    return [name for name, ok in zip(names, finite, strict=True) if not ok]


def compute_losses(
    accelerator: Any,
    prepared: Any,
    criterion: Any,
    batch: Sequence[dict[str, Any]],
    classes: Sequence[str],
    config: TrainConfig,
    step: int,
    micro: int,
) -> dict[str, Tensor]:
    """SEEM's losses on one micro-batch (forward through the DDP wrapper ``prepared``, targets, criterion).

    Non-finite predictions give NaN loss terms named after them instead (the matcher cannot run on NaN), which
    :func:`check_finite_loss` then reports on every process.
    """
    device = accelerator.device
    rank = accelerator.process_index
    images = [record["image"].to(device) for record in batch]
    grounding = [record["groundings"]["texts"] for record in batch] if config.grounding else None
    rng = random.Random(seed_of(config.seed, step, micro, rank, 1))
    generator = torch.Generator().manual_seed(seed_of(config.seed, step, micro, rank, 2))
    spatial = gt_spatial = None
    if config.spatial:
        spatial, gt_spatial = prepare_spatial_training(
            accelerator.unwrap_model(prepared),
            images,
            [record["instances"] for record in batch],
            max_candidate=config.spatial_max_candidate,
            max_iter=config.spatial_max_iter,
            generator=torch.Generator().manual_seed(seed_of(config.seed, step, micro, rank, 3)),
        )
    hashes = [record["groundings"]["hash"] for record in batch] if config.grounding else None
    outputs = prepared(images, classes, grounding, rng=rng, spatial=spatial, grounding_hash=hashes)
    bad = non_finite_outputs(outputs)
    if bad:  # the matcher cannot run on NaN; let the (collective) guard stop every process with the names
        return {f"output {name}": torch.tensor(math.nan, device=device) for name in bad}
    targets = build_targets(batch, outputs, device, grounding=config.grounding)
    if gt_spatial is not None:
        for target, masks in zip(targets, gt_spatial, strict=True):  # float once, as build_targets' masks
            target["gt_spatial_masks"] = masks.float()
    return criterion(outputs, targets, logit_scale=outputs["logit_scale"], generator=generator)


def check_finite_loss(
    accelerator: Any,
    loss: Tensor,
    losses: dict[str, Tensor],
    batch: Sequence[dict[str, Any]],
    step: int,
    micro: int,
    output_dir: Path,
) -> None:
    """Stop on a non-finite loss, on every process together (so none waits in a collective forever)."""
    finite = torch.isfinite(loss.detach()).float().reshape(1)
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, reduction="sum") / accelerator.num_processes
    if bool(finite.item() == 1.0):
        return
    bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v.detach()).all()}
    if bad:
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        where = f"non-finite loss terms: {terms}"
    elif torch.isfinite(loss.detach()):
        where = "the loss of another process is not finite"
    else:
        where = f"the total loss is {float(loss.detach())} (sum overflow)"
    files = [str(r.get("file_name", "?")) for r in batch]
    checkpoints = checkpoint_dirs(output_dir)
    last = f" The last checkpoint is {checkpoints[-1]}." if checkpoints else ""
    raise NonFiniteLossError(
        f"Training stopped at step {step + 1} (micro-batch {micro}, process {accelerator.process_index}): "
        f"{where}. Images: {files}. Try a lower TrainConfig.lr, keep TrainConfig.clip > 0, use "
        f"mixed_precision 'bf16' or 'no' instead of 'fp16', and check those images' annotations.{last}"
    )


def check_grad_norm(config: TrainConfig, grad_norm: Any, step: int) -> None:
    """Stop on a non-finite gradient norm (except under fp16, whose gradient scaler skips such steps by design)."""
    if config.resolved_mixed_precision() == "fp16":
        return
    if grad_norm is not None and not math.isfinite(float(grad_norm)):
        raise NonFiniteLossError(
            f"Training stopped at step {step + 1}: the gradient norm is {float(grad_norm)} although the loss is "
            "finite. Try a lower TrainConfig.lr or mixed_precision='no'."
        )
