"""The four fine-tuning strategies compared in the thesis, as named :class:`AdapterPlacement` presets.

Semantics are the thesis' *intended* ones, not what its fork happened to train: backbone adapters train; "adapter head" trains only the decoder adapters, the head adapters and the decoder
LayerNorms (base decoder weights frozen); "full head" trains the whole predictor except the text encoder. The pixel
decoder and the text encoder are frozen in all four.

========================================  ====================================================================
strategy                                  trains
========================================  ====================================================================
``frozen-backbone/adapter-head``          VL-adapters (cross-attn, self-attn, FFN), AdaptFormer head, decoder norms
``adapter-backbone/adapter-head``         the above + channel-spatial adapters in every backbone block
``frozen-backbone/full-head``             ``sem_seg_head.predictor`` minus ``lang_encoder`` (the official SEEM recipe)
``adapter-backbone/full-head`` (default)  the above + backbone adapters (best on every thesis dataset)
========================================  ====================================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

from seemadapt.adapters.names import ALL_DECODER_SITES, PREDICTOR
from seemadapt.adapters.placement import AdapterPlacement

DEFAULT_STRATEGY = "adapter-backbone/full-head"

_ADAPTER_HEAD: dict[str, Any] = {
    "decoder_adapters": ALL_DECODER_SITES,
    "head_adapters": True,
    "train_norms": True,
}
_FULL_HEAD: dict[str, Any] = {"train_full": (PREDICTOR,)}

STRATEGIES: dict[str, dict[str, Any]] = {
    "frozen-backbone/adapter-head": dict(_ADAPTER_HEAD),
    "adapter-backbone/adapter-head": {"backbone_adapters": True, **_ADAPTER_HEAD},
    "frozen-backbone/full-head": dict(_FULL_HEAD),
    "adapter-backbone/full-head": {"backbone_adapters": True, **_FULL_HEAD},
}


#: Default learning rate of a placement that trains base weights (any ``train_full``): the SEEM v1 recipe's.
FULL_LR = 1e-4
#: Default learning rate of a placement that trains only adapters (and norms): freshly initialised, zero-output
#: adapters need a larger step; at 1e-4 the adapter-head strategies barely leave their start on the toy scenes
#: (``benchmarks/bench_lr.py``, numbers in ``docs/adapters.md``).
ADAPTER_LR = 1e-3


def default_lr(placement: AdapterPlacement) -> float:
    """The learning rate a run uses when ``TrainConfig.lr`` is ``None``: :data:`FULL_LR` if the placement trains
    base weights, else :data:`ADAPTER_LR`."""
    return FULL_LR if placement.train_full else ADAPTER_LR


def get_strategy(name: str = DEFAULT_STRATEGY, **overrides: Any) -> AdapterPlacement:
    """The placement of a named strategy, with optional field overrides (e.g. ``backbone_spatial_reduction=4``)."""
    if name not in STRATEGIES:
        raise ValueError(f"Unknown adapter strategy {name!r}; choose one of {list(STRATEGIES)}.")
    placement = AdapterPlacement(**STRATEGIES[name])
    return dataclasses.replace(placement, **overrides) if overrides else placement


def resolve_placement(value: AdapterPlacement | str | dict[str, Any] | None = None) -> AdapterPlacement:
    """Accept what a user or a config file may give: a placement, a strategy name, a placement dict, or ``None``
    (the default strategy)."""
    if value is None:
        return get_strategy(DEFAULT_STRATEGY)
    if isinstance(value, AdapterPlacement):
        return value
    if isinstance(value, str):
        return get_strategy(value)
    if isinstance(value, dict):
        return AdapterPlacement.from_dict(value)
    raise TypeError(
        f"An adapter placement must be an AdapterPlacement, a strategy name or a dict, got {type(value).__name__}."
    )
