"""Adapters for fine-tuning SEEM: modules, their placement in the model, the four thesis strategies, optional LoRA.

>>> report = apply_adapters(model, "adapter-backbone/full-head")   # doctest: +SKIP
>>> print(report.table())                                            # doctest: +SKIP
>>> weights = adapter_state_dict(model)                              # doctest: +SKIP
"""

from seemadapt.adapters.apply import apply_adapters
from seemadapt.adapters.lora import LoRASpec, inject_lora, load_lora, save_lora
from seemadapt.adapters.modes import frozen_forward_context, set_train_mode
from seemadapt.adapters.modules import AdapterModule, AdaptFormer, ChannelSpatialAdapter, VLAdapter
from seemadapt.adapters.placement import AdapterPlacement
from seemadapt.adapters.report import GROUPS, AdapterReport, GroupCount, adapter_report
from seemadapt.adapters.state import adapter_state_dict, load_adapter_state_dict
from seemadapt.adapters.strategies import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    default_lr,
    get_strategy,
    resolve_placement,
)

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
