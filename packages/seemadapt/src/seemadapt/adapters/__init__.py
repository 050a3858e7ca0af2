"""Adapters for fine-tuning SEEM: modules, their placement in the model, the four thesis strategies, optional LoRA.

>>> report = apply_adapters(model, "adapter-backbone/full-head")   # doctest: +SKIP
>>> print(report.table())                                            # doctest: +SKIP
>>> weights = adapter_state_dict(model)                              # doctest: +SKIP

Names are imported on first access (start-up speed: placements and strategies are plain data that the CLI checks
without loading torch and the model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seemadapt.lazy import lazy_attributes

if TYPE_CHECKING:
    from seemadapt.adapters.apply import apply_adapters
    from seemadapt.adapters.lora import inject_lora, load_lora, save_lora
    from seemadapt.adapters.lora_spec import LoRASpec
    from seemadapt.adapters.modes import frozen_forward_context, set_train_mode
    from seemadapt.adapters.modules import AdapterModule, AdaptFormer, ChannelSpatialAdapter, VLAdapter
    from seemadapt.adapters.names import GROUPS
    from seemadapt.adapters.placement import AdapterPlacement
    from seemadapt.adapters.report import AdapterReport, GroupCount, adapter_report
    from seemadapt.adapters.state import adapter_state_dict, load_adapter_state_dict
    from seemadapt.adapters.strategies import (
        DEFAULT_STRATEGY,
        STRATEGIES,
        default_lr,
        get_strategy,
        resolve_placement,
    )

#: public name -> the module defining it (imported on first access)
_LAZY = {
    "AdaptFormer": "seemadapt.adapters.modules",
    "AdapterModule": "seemadapt.adapters.modules",
    "AdapterPlacement": "seemadapt.adapters.placement",
    "AdapterReport": "seemadapt.adapters.report",
    "ChannelSpatialAdapter": "seemadapt.adapters.modules",
    "DEFAULT_STRATEGY": "seemadapt.adapters.strategies",
    "GROUPS": "seemadapt.adapters.names",
    "GroupCount": "seemadapt.adapters.report",
    "LoRASpec": "seemadapt.adapters.lora_spec",
    "STRATEGIES": "seemadapt.adapters.strategies",
    "VLAdapter": "seemadapt.adapters.modules",
    "adapter_report": "seemadapt.adapters.report",
    "adapter_state_dict": "seemadapt.adapters.state",
    "apply_adapters": "seemadapt.adapters.apply",
    "default_lr": "seemadapt.adapters.strategies",
    "frozen_forward_context": "seemadapt.adapters.modes",
    "get_strategy": "seemadapt.adapters.strategies",
    "inject_lora": "seemadapt.adapters.lora",
    "load_adapter_state_dict": "seemadapt.adapters.state",
    "load_lora": "seemadapt.adapters.lora",
    "resolve_placement": "seemadapt.adapters.strategies",
    "save_lora": "seemadapt.adapters.lora",
    "set_train_mode": "seemadapt.adapters.modes",
}

__all__ = [
    "DEFAULT_STRATEGY",
    "GROUPS",
    "STRATEGIES",
    "AdaptFormer",
    "AdapterModule",
    "AdapterPlacement",
    "AdapterReport",
    "ChannelSpatialAdapter",
    "GroupCount",
    "LoRASpec",
    "VLAdapter",
    "adapter_report",
    "adapter_state_dict",
    "apply_adapters",
    "default_lr",
    "frozen_forward_context",
    "get_strategy",
    "inject_lora",
    "load_adapter_state_dict",
    "load_lora",
    "resolve_placement",
    "save_lora",
    "set_train_mode",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
