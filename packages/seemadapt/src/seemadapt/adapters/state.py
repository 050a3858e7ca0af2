"""Adapter weights apart from the base model: what to save, and loading them back into a base model.

Adapter parameter names never collide with official checkpoint keys: they live under
``backbone.layers.{s}.blocks.{b}.adapter.*`` and ``sem_seg_head.predictor.{cross_attention,self_attention,ffn,
mask_embed}_adapters.{i}.*``, names no official SEEM checkpoint uses. So load the base checkpoint first (or after:
``strict=False`` then sees only the adapter keys missing), then apply adapters, then load adapter weights with
:func:`load_adapter_state_dict`. LoRA is the exception: peft renames the wrapped layers (``*.base_layer.*``), so load
the base checkpoint before applying a placement with LoRA.
"""

from __future__ import annotations

from torch import Tensor, nn

from seemadapt.adapters.apply import apply_adapters, as_placement
from seemadapt.adapters.lookup import adapter_modules
from seemadapt.adapters.lora import lora_module_names, lora_parameter_names
from seemadapt.adapters.placement import AdapterPlacement
from seemadapt.adapters.report import AdapterReport, adapter_report, report_of

__all__ = ["adapter_state_dict", "adapter_state_keys", "load_adapter_state_dict"]


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter and trained weights only, under the model's own state-dict names.

    Holds every state entry of the inserted adapter modules and LoRA layers plus every parameter the placement
    trains (e.g. the whole head for "full-head" strategies): what, together with the base checkpoint and the
    placement, rebuilds the fine-tuned model. Tensors share storage with the model, as ``state_dict()`` does.
    """
    keys = adapter_state_keys(model, adapter_report(model))
    return {k: v for k, v in model.state_dict().items() if k in keys}


def load_adapter_state_dict(
    model: nn.Module, state_dict: dict[str, Tensor], placement: AdapterPlacement | str | None = None
) -> AdapterReport:
    """Load weights saved by :func:`adapter_state_dict` into a model that holds the base weights.

    If the model has no adapters yet, ``placement`` is applied first (it must be the one used in training). Every
    key must be present and nothing else: a mismatch raises ``ValueError`` listing the keys.
    """
    report = report_of(model)
    if report is None:
        if placement is None:
            raise ValueError(
                "load_adapter_state_dict: the model has no adapters yet; pass the placement they were trained with."
            )
        report = apply_adapters(model, placement)
    elif placement is not None and as_placement(placement) != report.placement:
        raise ValueError(
            "load_adapter_state_dict: the model already carries a different placement; load into a fresh model."
        )
    expected = adapter_state_keys(model, report)
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(
            f"load_adapter_state_dict: the weights do not fit the placement: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})."
        )
    model.load_state_dict(state_dict, strict=False)
    return report


def adapter_state_keys(model: nn.Module, report: AdapterReport) -> set[str]:
    """The state-dict keys :func:`adapter_state_dict` holds: adapter modules, LoRA layers, trained parameters."""
    keys = set(report.trainable)
    for prefix, module in adapter_modules(model).items():
        keys |= {f"{prefix}.{k}" for k in module.state_dict()}
    keys |= lora_parameter_names(model)
    for name in lora_module_names(model):  # LoRA layers may hold buffers as well
        module = model.get_submodule(name)
        keys |= {f"{name}.{k}" for k in module.state_dict() if not k.startswith("base_layer.")}
    return keys
