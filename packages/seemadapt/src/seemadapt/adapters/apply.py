"""Carrying out a placement: adapters into the model's hooks, ``requires_grad`` on exactly the intended parameters.

:func:`apply_adapters` puts the modules of :mod:`seemadapt.adapters.modules` into the model's hooks, turns
``requires_grad`` on for exactly the intended parameters (off for everything else) and returns an
:class:`~seemadapt.adapters.report.AdapterReport` with the trainable-parameter table. Only the parts a placement
uses must exist in the model (see :mod:`seemadapt.adapters.names`).

Stochastic depth: whenever the backbone's own weights are all frozen, :func:`apply_adapters` calls
``backbone.freeze(eval_mode=True)``: its DropPath is off whatever ``train()`` says, while the block adapters follow
``train()``. (The official recipe left stochastic depth on in its frozen backbone; ``frozen_drop_path=True``
reproduces that.) A frozen base gets no benefit from noise it cannot adapt to, and with adapters it would make
the adapters chase random block drops.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from seemadapt.adapters.lookup import adapter_modules, adapter_parameter_names, maybe_submodule, submodule
from seemadapt.adapters.lora import inject_lora, lora_parameter_names, resolve_lora_targets
from seemadapt.adapters.modules import AdapterModule, AdaptFormer, ChannelSpatialAdapter, VLAdapter
from seemadapt.adapters.names import (
    BACKBONE,
    DECODER_HOOKS,
    HEAD_HOOK,
    PREDICTOR,
    in_language_encoder,
    text_encoder_message,
)
from seemadapt.adapters.placement import AdapterPlacement
from seemadapt.adapters.report import REPORT_ATTR, AdapterReport, build_report, report_of
from seemadapt.adapters.strategies import get_strategy

__all__ = ["apply_adapters", "as_placement"]


def apply_adapters(model: nn.Module, placement: AdapterPlacement | str) -> AdapterReport:
    """Insert the placement's adapters into ``model`` (in place) and select its trainable parameters.

    ``placement`` is an :class:`AdapterPlacement` or a strategy name (see :mod:`seemadapt.adapters.strategies`).
    New modules are created on the device and dtype of the layer they attach to; outputs are unchanged at init
    unless ``fork_faithful`` is set. Raises ``ValueError`` when a pattern matches nothing, when a placement would
    train the text encoder or nothing at all, and when the model already has adapters (apply once per model).
    """
    placement = as_placement(placement)
    if report_of(model) is not None or adapter_modules(model) or lora_parameter_names(model):
        raise ValueError(
            "apply_adapters: the model already has adapters; apply a placement once, to a fresh model."
        )
    # Check every pattern on the untouched model first, so a bad placement leaves the model as it was.
    _select_trainable(model, placement)
    if placement.lora is not None:
        resolve_lora_targets(model, placement.lora.targets)
    injected: list[str] = []
    try:
        if placement.backbone_adapters:
            injected += _inject_backbone(model, placement)
        if placement.decoder_adapters or placement.head_adapters:
            injected += _inject_decoder(model, placement)
    except Exception:
        _remove_hook_adapters(model)
        raise
    if placement.lora is not None:
        injected += [f"{name} (LoRA)" for name in inject_lora(model, placement.lora)]
    selected = _select_trainable(model, placement)
    if not selected:
        raise ValueError(
            "apply_adapters: the placement trains nothing; add adapters, train_norms or train_full."
        )
    _set_trainable(model, selected, placement)
    report = build_report(model, placement, tuple(injected))
    setattr(model, REPORT_ATTR, report)
    return report


# ---------------------------------------------------------------------- injection


def _inject_backbone(model: nn.Module, placement: AdapterPlacement) -> list[str]:
    backbone = submodule(model, BACKBONE, "backbone adapters")
    if not hasattr(backbone, "blocks"):
        raise TypeError(
            f"Backbone adapters need '{BACKBONE}.blocks()' (FocalNet); {type(backbone).__name__} has none."
        )
    blocks = list(backbone.blocks())
    for pattern in placement.backbone_blocks:
        if not any(fnmatch.fnmatchcase(name, pattern) for name, _, _ in blocks):
            example = blocks[0][0] if blocks else "layers.0.blocks.0"
            raise ValueError(
                f"AdapterPlacement.backbone_blocks: {pattern!r} matches no backbone block (names look like "
                f"{example!r})."
            )
    injected = []
    for name, block, channels in blocks:
        stage = int(name.split(".")[1])
        if stage not in placement.backbone_stages:
            continue
        if not any(fnmatch.fnmatchcase(name, p) for p in placement.backbone_blocks):
            continue
        reference = next(block.parameters())
        with torch.device(reference.device):
            adapter = ChannelSpatialAdapter(
                channels,
                reduction=placement.backbone_reduction,
                spatial_reduction=placement.backbone_spatial_reduction,
                fork_faithful=placement.fork_faithful,
            )
        block.adapter = adapter.to(dtype=reference.dtype)
        injected.append(f"{BACKBONE}.{name}.adapter")
    if not injected:
        raise ValueError(
            f"AdapterPlacement: no backbone block is both in backbone_stages {placement.backbone_stages} and "
            f"matched by backbone_blocks {placement.backbone_blocks}."
        )
    return injected


def _inject_decoder(model: nn.Module, placement: AdapterPlacement) -> list[str]:
    predictor = submodule(model, PREDICTOR, "decoder and head adapters")
    config = getattr(predictor, "config", None)
    if config is None:
        raise TypeError(
            f"Decoder adapters need '{PREDICTOR}.config' (a DecoderConfig); the predictor has none."
        )
    reference = next(p for n, p in predictor.named_parameters() if not n.startswith("lang_encoder."))
    injected = []
    hooks: list[tuple[str, list[nn.Module]]] = []
    with torch.device(reference.device):
        for site in placement.decoder_adapters:
            modules = [
                VLAdapter(
                    config.hidden_dim,
                    placement.decoder_bottleneck,
                    residual=False,  # the decoder adds the residual itself: x = x + adapter(x)
                    fork_faithful=placement.fork_faithful,
                )
                for _ in range(config.num_transformer_layers)
            ]
            hooks.append((DECODER_HOOKS[site], modules))
        if placement.head_adapters:
            modules = [
                AdaptFormer(
                    config.hidden_dim,
                    placement.head_bottleneck,
                    out_dim=config.mask_dim,
                    scale=placement.head_scale,
                    learnable_scale=placement.head_learnable_scale,
                    fork_faithful=placement.fork_faithful,
                )
                for _ in range(config.dec_layers)
            ]
            hooks.append((HEAD_HOOK, modules))
    for attribute, modules in hooks:
        if not hasattr(predictor, attribute):
            raise TypeError(f"The predictor ({type(predictor).__name__}) has no adapter hook {attribute!r}.")
        setattr(predictor, attribute, nn.ModuleList(modules).to(dtype=reference.dtype))
        injected += [f"{PREDICTOR}.{attribute}.{i}" for i in range(len(modules))]
    return injected


# ---------------------------------------------------------------------- selection


def _select_trainable(model: nn.Module, placement: AdapterPlacement) -> set[str]:
    names = [n for n, _ in model.named_parameters()]
    selected = adapter_parameter_names(model) | lora_parameter_names(model)
    for pattern in placement.train_full:
        hits = {n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + ".*")}
        if not hits:
            raise ValueError(
                f"AdapterPlacement.train_full: {pattern!r} matches no parameter or module of the model "
                f"(e.g. {PREDICTOR!r} selects the whole head)."
            )
        text = {n for n in hits if in_language_encoder(n)}
        if text == hits:
            raise ValueError(text_encoder_message(f"AdapterPlacement.train_full pattern {pattern!r}"))
        selected |= hits - text
    if placement.train_norms:
        predictor = submodule(model, PREDICTOR, "train_norms")
        adapters = tuple(f"{n}." for n, m in predictor.named_modules() if isinstance(m, AdapterModule))
        norms = {
            f"{PREDICTOR}.{module_name}.{param_name}"
            for module_name, module in predictor.named_modules()
            if isinstance(module, nn.LayerNorm) and not module_name.startswith(("lang_encoder.", *adapters))
            for param_name, _ in module.named_parameters()
        }
        if not norms:
            raise ValueError(
                f"AdapterPlacement.train_norms: '{PREDICTOR}' has no nn.LayerNorm outside the text encoder."
            )
        selected |= norms
    return selected


def _set_trainable(model: nn.Module, selected: set[str], placement: AdapterPlacement) -> None:
    backbone = maybe_submodule(model, BACKBONE)
    if backbone is not None and hasattr(backbone, "freeze") and hasattr(backbone, "unfreeze"):
        adapters = adapter_parameter_names(model) | lora_parameter_names(model)
        base = (f"{BACKBONE}.{n}" for n, _ in backbone.named_parameters())
        if any(n in selected and n not in adapters for n in base):
            backbone.unfreeze()
        else:
            backbone.freeze(eval_mode=not placement.frozen_drop_path)
    for name, param in model.named_parameters():
        param.requires_grad_(name in selected)


def as_placement(placement: AdapterPlacement | str) -> AdapterPlacement:
    """A placement, or the strategy a name gives."""
    if isinstance(placement, AdapterPlacement):
        return placement
    if isinstance(placement, str):
        return get_strategy(placement)
    raise TypeError(f"Expected an AdapterPlacement or a strategy name, got {type(placement).__name__}.")


def _remove_hook_adapters(model: nn.Module) -> None:
    """Empty every adapter hook again (used to undo a failed :func:`apply_adapters`)."""
    backbone = maybe_submodule(model, BACKBONE)
    if backbone is not None and hasattr(backbone, "blocks"):
        for _, block, _ in backbone.blocks():
            if isinstance(getattr(block, "adapter", None), AdapterModule):
                block.adapter = None
    predictor = maybe_submodule(model, PREDICTOR)
    if predictor is not None:
        for attribute in (*DECODER_HOOKS.values(), HEAD_HOOK):
            if isinstance(getattr(predictor, attribute, None), nn.ModuleList):
                setattr(predictor, attribute, None)
