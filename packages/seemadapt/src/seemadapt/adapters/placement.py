"""Where adapters go in SEEM, which parameters train, and how adapter weights are saved apart from the base model.

:func:`apply_adapters` puts the modules of :mod:`seemadapt.adapters.modules` into the model's hooks, turns
``requires_grad`` on for exactly the intended parameters (off for everything else) and returns an
:class:`AdapterReport` with the trainable-parameter table. The intended sets are the thesis' *intended* ones
(``shared/research/seem_spec.md`` 8.3), not the fork's accidental ones: backbone adapters really train; with adapter
heads the base decoder weights stay frozen; the text encoder is frozen always.

Model contract (SEEM v1 naming): ``backbone`` (FocalNet: ``blocks()``, per-block ``adapter`` hook, ``freeze()``),
``sem_seg_head.pixel_decoder`` and ``sem_seg_head.predictor`` (SEEMDecoder: ``config`` and the hooks
``cross_attention_adapters``, ``self_attention_adapters``, ``ffn_adapters``, ``mask_embed_adapters``; its
``lang_encoder`` is the text encoder). Only the parts a placement uses must exist.

Adapter parameter names never collide with official checkpoint keys: they live under
``backbone.layers.{s}.blocks.{b}.adapter.*`` and ``sem_seg_head.predictor.{cross_attention,self_attention,ffn,
mask_embed}_adapters.{i}.*``, names no official SEEM checkpoint uses. So load the base checkpoint first (or after:
``strict=False`` then sees only the adapter keys missing), then apply adapters, then load adapter weights with
:func:`load_adapter_state_dict`. LoRA is the exception: peft renames the wrapped layers (``*.base_layer.*``), so load
the base checkpoint before applying a placement with LoRA.

Frozen parts and autograd (for the training loop):

* A frozen parameter never gets a gradient: autograd skips the weight-gradient of every op whose weight has
  ``requires_grad=False`` and records nothing at all for ops none of whose inputs require grad. So a frozen backbone
  fed with images builds no graph even without ``torch.no_grad()``, and with trainable backbone adapters gradients
  flow *through* the frozen blocks to the adapters without computing gradients of the frozen weights.
  :func:`frozen_forward_context` makes the first case explicit (``torch.no_grad()`` when a module and everything
  upstream of it is frozen).
* Stochastic depth: whenever the backbone's own weights are all frozen, :func:`apply_adapters` calls
  ``backbone.freeze(eval_mode=True)``: its DropPath is off whatever ``train()`` says, while the block adapters follow
  ``train()``. (The official recipe left stochastic depth on in its frozen backbone; ``frozen_drop_path=True``
  reproduces that.) A frozen base gets no benefit from noise it cannot adapt to, and with adapters it would make
  the adapters chase random block drops.
* :func:`set_train_mode` replaces ``model.train(mode)`` in a training loop: it also puts every sub-module whose
  parameters are all frozen into eval mode (no dropout or stochastic depth in frozen parts).
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from seemadapt.adapters.lora import (
    LANGUAGE_ENCODER,
    LoRASpec,
    inject_lora,
    lora_module_names,
    lora_parameter_names,
    resolve_lora_targets,
)
from seemadapt.adapters.modules import AdapterModule, AdaptFormer, ChannelSpatialAdapter, VLAdapter

BACKBONE = "backbone"
PIXEL_DECODER = "sem_seg_head.pixel_decoder"
PREDICTOR = "sem_seg_head.predictor"

DecoderSite = Literal["cross_attention", "self_attention", "ffn"]
DECODER_HOOKS: dict[str, str] = {
    "cross_attention": "cross_attention_adapters",
    "self_attention": "self_attention_adapters",
    "ffn": "ffn_adapters",
}
HEAD_HOOK = "mask_embed_adapters"
ALL_DECODER_SITES: tuple[DecoderSite, ...] = ("cross_attention", "self_attention", "ffn")

GROUPS = (
    "backbone",
    "backbone adapters",
    "pixel decoder",
    "decoder",
    "decoder adapters",
    "head adapters",
    "language encoder",
    "LoRA",
    "other",
)
_ALWAYS_SHOWN = GROUPS[:7]
_REPORT_ATTR = "_seemadapt_adapter_report"


@dataclass
class AdapterPlacement:
    """Which adapters to insert and which parameters to train. Everything not selected is frozen.

    Backbone (channel+spatial adapter inside FocalNet blocks, on the focal-modulation output):
        backbone_adapters: insert them.
        backbone_reduction: channel-attention reduction (4 in the thesis).
        backbone_spatial_reduction: hidden channels of the spatial branch are ``C // this`` (1 in the thesis).
        backbone_stages: stages (0..3) that get adapters.
        backbone_blocks: glob patterns over block names ``layers.{stage}.blocks.{index}``; each must match a block.

    Decoder (VL-adapters, residual bottlenecks on the whole sequence after each decoder layer's sub-layer):
        decoder_adapters: sites among ``"cross_attention"``, ``"self_attention"``, ``"ffn"``.
        decoder_bottleneck: hidden width, default ``hidden_dim // 2``.

    Mask head (AdaptFormer branch added to ``mask_embed(d)`` in every prediction):
        head_adapters: insert them.
        head_bottleneck: hidden width, default ``hidden_dim // 2``.
        head_scale, head_learnable_scale: the branch scale (0.1, fixed).

    Training:
        train_norms: also train the decoder's LayerNorms (every ``nn.LayerNorm`` of the predictor outside the text
            encoder: the cross/self/FFN layers' ``norm`` and ``decoder_norm``), as the thesis did with VL-adapters.
        train_full: glob patterns over parameter or module names whose parameters train fully, e.g.
            ``"sem_seg_head.predictor"`` (the full head). A pattern selects a parameter if it matches its name or a
            module above it. The text encoder (``sem_seg_head.predictor.lang_encoder``) is always skipped: broad
            patterns leave it out, and a pattern that selects only text-encoder parameters is an error.
        lora: optional :class:`LoRASpec` (peft LoRA on named Linear/Conv2d layers); LoRA weights train.
        fork_faithful: build the thesis fork's adapter modules (kaiming init, not identities) for reproduction.
        frozen_drop_path: keep stochastic depth on in a backbone whose own weights are frozen (official recipe).
    """

    backbone_adapters: bool = False
    backbone_reduction: int = 4
    backbone_spatial_reduction: int = 1
    backbone_stages: tuple[int, ...] = (0, 1, 2, 3)
    backbone_blocks: tuple[str, ...] = ("*",)
    decoder_adapters: tuple[DecoderSite, ...] = ()
    decoder_bottleneck: int | None = None
    head_adapters: bool = False
    head_bottleneck: int | None = None
    head_scale: float = 0.1
    head_learnable_scale: bool = False
    train_norms: bool = False
    train_full: tuple[str, ...] = ()
    lora: LoRASpec | None = None
    fork_faithful: bool = False
    frozen_drop_path: bool = False

    def __post_init__(self) -> None:
        for name in ("backbone_stages", "backbone_blocks", "decoder_adapters", "train_full"):
            value = getattr(self, name)
            setattr(self, name, (value,) if isinstance(value, (str, int)) else tuple(value))
        if isinstance(self.lora, dict):
            self.lora = LoRASpec(**self.lora)
        for name in (
            "backbone_adapters",
            "head_adapters",
            "head_learnable_scale",
            "train_norms",
            "fork_faithful",
            "frozen_drop_path",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"AdapterPlacement.{name} must be True or False, got {getattr(self, name)!r}."
                )
        for name in ("backbone_reduction", "backbone_spatial_reduction"):
            _check_int(name, getattr(self, name))
        for name in ("decoder_bottleneck", "head_bottleneck"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name))
        stages = self.backbone_stages
        if not stages or len(set(stages)) != len(stages) or not all(s in (0, 1, 2, 3) for s in stages):
            raise ValueError(
                f"AdapterPlacement.backbone_stages must be distinct stages among 0..3, got {stages!r}."
            )
        if not self.backbone_blocks or not all(isinstance(p, str) and p for p in self.backbone_blocks):
            raise ValueError(
                "AdapterPlacement.backbone_blocks must be non-empty glob strings over block names such as "
                f"'layers.2.blocks.*', got {self.backbone_blocks!r}."
            )
        bad = [s for s in self.decoder_adapters if s not in DECODER_HOOKS]
        if bad or len(set(self.decoder_adapters)) != len(self.decoder_adapters):
            raise ValueError(
                f"AdapterPlacement.decoder_adapters must be distinct sites among {ALL_DECODER_SITES}, "
                f"got {self.decoder_adapters!r}."
            )
        if (
            not isinstance(self.head_scale, (int, float))
            or not math.isfinite(self.head_scale)
            or self.head_scale == 0
        ):
            raise ValueError(
                f"AdapterPlacement.head_scale must be a finite non-zero number, got {self.head_scale!r}."
            )
        for pattern in self.train_full:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(
                    f"AdapterPlacement.train_full must hold non-empty glob strings, got {pattern!r}."
                )
            if "lang_encoder" in pattern:
                raise ValueError(_text_encoder_message(f"AdapterPlacement.train_full pattern {pattern!r}"))
        if self.lora is not None and not isinstance(self.lora, LoRASpec):
            raise ValueError(f"AdapterPlacement.lora must be a LoRASpec, a dict or None, got {self.lora!r}.")
        self._reject_unused_settings()

    def _reject_unused_settings(self) -> None:
        """Settings of a part that is switched off are silent no-ops: refuse them instead."""
        defaults = {f.name: f.default for f in fields(self)}
        groups = {
            "backbone_adapters": (
                "backbone_reduction",
                "backbone_spatial_reduction",
                "backbone_stages",
                "backbone_blocks",
            ),
            "decoder_adapters": ("decoder_bottleneck",),
            "head_adapters": ("head_bottleneck", "head_scale", "head_learnable_scale"),
        }
        for switch, names in groups.items():
            if getattr(self, switch):
                continue
            for name in names:
                if getattr(self, name) != defaults[name]:
                    raise ValueError(
                        f"AdapterPlacement.{name} is set but {switch} is off, so it would do nothing; "
                        f"turn {switch} on or leave {name} at its default."
                    )
        if self.fork_faithful and not (self.backbone_adapters or self.decoder_adapters or self.head_adapters):
            raise ValueError(
                "AdapterPlacement.fork_faithful is set but the placement inserts no adapter module."
            )

    @property
    def has_adapters(self) -> bool:
        return bool(self.backbone_adapters or self.decoder_adapters or self.head_adapters or self.lora)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists); :meth:`from_dict` inverts it."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        if self.lora is not None:
            data["lora"] = self.lora.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterPlacement:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"AdapterPlacement: unknown fields {sorted(unknown)}; known fields are {sorted(known)}."
            )
        return cls(**data)


@dataclass(frozen=True)
class GroupCount:
    """Parameter counts of one module group."""

    total: int
    trainable: int


@dataclass
class AdapterReport:
    """What :func:`apply_adapters` did.

    Attributes:
        placement: the placement applied.
        injected: names of the inserted adapter modules and of the LoRA-wrapped layers.
        trainable: names of the parameters that train (``requires_grad=True``), in model order.
        groups: parameter counts per group (see :data:`GROUPS`).
        group_of: the group of every parameter name (e.g. to give backbone adapters their own learning rate).
    """

    placement: AdapterPlacement
    injected: tuple[str, ...]
    trainable: tuple[str, ...]
    groups: dict[str, GroupCount]
    group_of: dict[str, str] = field(repr=False)

    @property
    def num_parameters(self) -> int:
        return sum(g.total for g in self.groups.values())

    @property
    def num_trainable(self) -> int:
        return sum(g.trainable for g in self.groups.values())

    def trainable_by_group(self) -> dict[str, list[str]]:
        """Trainable parameter names per group (only groups that have some)."""
        out: dict[str, list[str]] = {}
        for name in self.trainable:
            out.setdefault(self.group_of[name], []).append(name)
        return out

    def table(self) -> str:
        """A plain-text table: parameters and trainable parameters per group, then the totals."""
        rows = [(g, c) for g, c in self.groups.items() if g in _ALWAYS_SHOWN or c.total]
        rows.append(("total", GroupCount(self.num_parameters, self.num_trainable)))
        width = max(len(g) for g, _ in rows)
        lines = [f"{'group':<{width}}  {'parameters':>13}  {'trainable':>13}  {'%':>6}"]
        for group, count in rows:
            share = 100.0 * count.trainable / count.total if count.total else 0.0
            if group == "total":
                lines.append("-" * len(lines[0]))
            lines.append(f"{group:<{width}}  {count.total:>13,}  {count.trainable:>13,}  {share:>6.2f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def apply_adapters(model: nn.Module, placement: AdapterPlacement | str) -> AdapterReport:
    """Insert the placement's adapters into ``model`` (in place) and select its trainable parameters.

    ``placement`` is an :class:`AdapterPlacement` or a strategy name (see :mod:`seemadapt.adapters.strategies`).
    New modules are created on the device and dtype of the layer they attach to; outputs are unchanged at init
    unless ``fork_faithful`` is set. Raises ``ValueError`` when a pattern matches nothing, when a placement would
    train the text encoder or nothing at all, and when the model already has adapters (apply once per model).
    """
    placement = _as_placement(placement)
    if _report_of(model) is not None or _adapter_modules(model) or lora_parameter_names(model):
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
    report = _build_report(model, placement, tuple(injected))
    setattr(model, _REPORT_ATTR, report)
    return report


def adapter_report(model: nn.Module) -> AdapterReport:
    """The report of the placement applied to ``model`` (raises if none was)."""
    report = _report_of(model)
    if report is None:
        raise ValueError("The model has no adapter placement; call apply_adapters(model, placement) first.")
    return report


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter and trained weights only, under the model's own state-dict names.

    Holds every state entry of the inserted adapter modules and LoRA layers plus every parameter the placement
    trains (e.g. the whole head for "full-head" strategies): what, together with the base checkpoint and the
    placement, rebuilds the fine-tuned model. Tensors share storage with the model, as ``state_dict()`` does.
    """
    keys = _adapter_state_keys(model, adapter_report(model))
    return {k: v for k, v in model.state_dict().items() if k in keys}


def load_adapter_state_dict(
    model: nn.Module, state_dict: dict[str, Tensor], placement: AdapterPlacement | str | None = None
) -> AdapterReport:
    """Load weights saved by :func:`adapter_state_dict` into a model that holds the base weights.

    If the model has no adapters yet, ``placement`` is applied first (it must be the one used in training). Every
    key must be present and nothing else: a mismatch raises ``ValueError`` listing the keys.
    """
    report = _report_of(model)
    if report is None:
        if placement is None:
            raise ValueError(
                "load_adapter_state_dict: the model has no adapters yet; pass the placement they were trained with."
            )
        report = apply_adapters(model, placement)
    elif placement is not None and _as_placement(placement) != report.placement:
        raise ValueError(
            "load_adapter_state_dict: the model already carries a different placement; load into a fresh model."
        )
    expected = _adapter_state_keys(model, report)
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(
            f"load_adapter_state_dict: the weights do not fit the placement: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})."
        )
    model.load_state_dict(state_dict, strict=False)
    return report


def frozen_forward_context(*modules: nn.Module) -> contextlib.AbstractContextManager:
    """``torch.no_grad()`` if none of ``modules`` has a trainable parameter, else a do-nothing context.

    Pass a module together with everything upstream of it, e.g. ``frozen_forward_context(model.backbone)`` around
    the backbone (its input is the image) or ``frozen_forward_context(backbone, pixel_decoder)`` around the pixel
    decoder: when backbone adapters train, gradients must flow through the frozen pixel decoder, and the context
    then does nothing.
    """
    if any(p.requires_grad for module in modules for p in module.parameters()):
        return contextlib.nullcontext()
    return torch.no_grad()


def set_train_mode(model: nn.Module, mode: bool = True) -> nn.Module:
    """``model.train(mode)``, then (in training) eval mode for every sub-module whose parameters are all frozen.

    Modules that manage their own mode when frozen (an attribute ``frozen`` that is True, like FocalNet after
    ``freeze()``) are left to do so.
    """
    model.train(mode)
    if mode:
        _eval_frozen_children(model)
    return model


# ---------------------------------------------------------------------- injection


def _inject_backbone(model: nn.Module, placement: AdapterPlacement) -> list[str]:
    backbone = _submodule(model, BACKBONE, "backbone adapters")
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
    predictor = _submodule(model, PREDICTOR, "decoder and head adapters")
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
    selected = _adapter_parameter_names(model) | lora_parameter_names(model)
    for pattern in placement.train_full:
        hits = {n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + ".*")}
        if not hits:
            raise ValueError(
                f"AdapterPlacement.train_full: {pattern!r} matches no parameter or module of the model "
                f"(e.g. {PREDICTOR!r} selects the whole head)."
            )
        text = {n for n in hits if _in_language_encoder(n)}
        if text == hits:
            raise ValueError(_text_encoder_message(f"AdapterPlacement.train_full pattern {pattern!r}"))
        selected |= hits - text
    if placement.train_norms:
        predictor = _submodule(model, PREDICTOR, "train_norms")
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
    backbone = _maybe_submodule(model, BACKBONE)
    if backbone is not None and hasattr(backbone, "freeze") and hasattr(backbone, "unfreeze"):
        adapters = _adapter_parameter_names(model) | lora_parameter_names(model)
        base = (f"{BACKBONE}.{n}" for n, _ in backbone.named_parameters())
        if any(n in selected and n not in adapters for n in base):
            backbone.unfreeze()
        else:
            backbone.freeze(eval_mode=not placement.frozen_drop_path)
    for name, param in model.named_parameters():
        param.requires_grad_(name in selected)


# ---------------------------------------------------------------------- report


def _build_report(model: nn.Module, placement: AdapterPlacement, injected: tuple[str, ...]) -> AdapterReport:
    adapters = _adapter_modules(model)
    lora = lora_parameter_names(model)
    counts = {g: [0, 0] for g in GROUPS}
    group_of: dict[str, str] = {}
    trainable = []
    for name, param in model.named_parameters():
        group = _group(name, adapters, lora)
        group_of[name] = group
        counts[group][0] += param.numel()
        if param.requires_grad:
            counts[group][1] += param.numel()
            trainable.append(name)
    groups = {g: GroupCount(*c) for g, c in counts.items()}
    return AdapterReport(placement, injected, tuple(trainable), groups, group_of)


def _group(name: str, adapters: dict[str, nn.Module], lora: set[str]) -> str:
    if _in_language_encoder(name):
        return "language encoder"
    if name in lora:
        return "LoRA"
    owner = next((prefix for prefix in adapters if name.startswith(prefix + ".")), None)
    if owner is not None:
        if owner.startswith(BACKBONE + "."):
            return "backbone adapters"
        if owner.startswith(f"{PREDICTOR}.{HEAD_HOOK}."):
            return "head adapters"
        return "decoder adapters"
    for prefix, group in ((BACKBONE, "backbone"), (PIXEL_DECODER, "pixel decoder"), (PREDICTOR, "decoder")):
        if name.startswith(prefix + "."):
            return group
    return "other"


# ---------------------------------------------------------------------- helpers


def _as_placement(placement: AdapterPlacement | str) -> AdapterPlacement:
    if isinstance(placement, AdapterPlacement):
        return placement
    if isinstance(placement, str):
        from seemadapt.adapters.strategies import get_strategy

        return get_strategy(placement)
    raise TypeError(f"Expected an AdapterPlacement or a strategy name, got {type(placement).__name__}.")


def _report_of(model: nn.Module) -> AdapterReport | None:
    return getattr(model, _REPORT_ATTR, None)


def _adapter_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Top-most AdapterModules by qualified name."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, AdapterModule) and not any(name.startswith(p + ".") for p in found):
            found[name] = module
    return found


def _adapter_parameter_names(model: nn.Module) -> set[str]:
    return {
        f"{prefix}.{n}"
        for prefix, module in _adapter_modules(model).items()
        for n, _ in module.named_parameters()
    }


def _adapter_state_keys(model: nn.Module, report: AdapterReport) -> set[str]:
    keys = set(report.trainable)
    for prefix, module in _adapter_modules(model).items():
        keys |= {f"{prefix}.{k}" for k in module.state_dict()}
    keys |= lora_parameter_names(model)
    for name in lora_module_names(model):  # LoRA layers may hold buffers as well
        module = model.get_submodule(name)
        keys |= {f"{name}.{k}" for k in module.state_dict() if not k.startswith("base_layer.")}
    return keys


def _remove_hook_adapters(model: nn.Module) -> None:
    """Empty every adapter hook again (used to undo a failed :func:`apply_adapters`)."""
    backbone = _maybe_submodule(model, BACKBONE)
    if backbone is not None and hasattr(backbone, "blocks"):
        for _, block, _ in backbone.blocks():
            if isinstance(getattr(block, "adapter", None), AdapterModule):
                block.adapter = None
    predictor = _maybe_submodule(model, PREDICTOR)
    if predictor is not None:
        for attribute in (*DECODER_HOOKS.values(), HEAD_HOOK):
            if isinstance(getattr(predictor, attribute, None), nn.ModuleList):
                setattr(predictor, attribute, None)


def _iter_frozen_candidates(module: nn.Module) -> Iterator[nn.Module]:
    for child in module.children():
        if getattr(child, "frozen", False) is True:
            continue
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            yield child
        else:
            yield from _iter_frozen_candidates(child)


def _eval_frozen_children(model: nn.Module) -> None:
    for module in list(_iter_frozen_candidates(model)):
        module.eval()


def _submodule(model: nn.Module, path: str, purpose: str) -> nn.Module:
    module = _maybe_submodule(model, path)
    if module is None:
        raise ValueError(
            f"{purpose} need the submodule '{path}', which the model ({type(model).__name__}) lacks."
        )
    return module


def _maybe_submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _in_language_encoder(name: str) -> bool:
    return name == LANGUAGE_ENCODER or name.startswith(LANGUAGE_ENCODER + ".")


def _check_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"AdapterPlacement.{name} must be a positive integer, got {value!r}.")


def _text_encoder_message(subject: str) -> str:
    return (
        f"{subject} selects the language (text) encoder '{LANGUAGE_ENCODER}', which always stays frozen: SEEM's "
        "class and grounding embeddings come from it and are cached, and the thesis never tuned it. Train the "
        "decoder instead (e.g. 'sem_seg_head.predictor', which skips the text encoder)."
    )
