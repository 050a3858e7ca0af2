"""seemadapt: fine-tune SEEM with light adapters on datasets that follow the diffsynth contract.

>>> from seemadapt import finetune, evaluate, SEEM                          # doctest: +SKIP
>>> run = finetune(train=[real_ds, "me/wet-damage-synthetic"], eval=real_val,
...                model="xdecoder/SEEM:seem_focalt_v1.pt", strategy="adapter-backbone/full-head")
>>> print(evaluate(run.model, real_val).table())                           # doctest: +SKIP

``import seemadapt`` stays light: every public name is imported on first access (torch, detectron2 and peft load
only when needed). The functions ``finetune`` and ``evaluate`` live in the submodules ``seemadapt.finetuning`` and
``seemadapt.evaluation``: a submodule named like a function would replace the function as the package attribute
once imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seemadapt import detectron2_compat
from seemadapt.lazy import lazy_attributes

__version__ = "0.1.0"

detectron2_compat.apply()  # so that detectron2's own tools import after `import seemadapt`

#: public name -> (module, attribute in that module)
_LAZY: dict[str, tuple[str, str]] = {
    # the main jobs
    "finetune": ("seemadapt.finetuning", "finetune"),
    "evaluate": ("seemadapt.evaluation", "evaluate"),
    "EvalResult": ("seemadapt.evaluation", "EvalResult"),
    # the model
    "SEEM": ("seemadapt.model.seem", "SEEM"),
    "SEEMConfig": ("seemadapt.model.config", "SEEMConfig"),
    # data
    "load": ("seemadapt.data.sources", "load_source"),
    "register": ("seemadapt.data.register", "register"),
    "make_contract_dataset": ("seemadapt.testing", "make_contract_dataset"),
    # adapters
    "AdapterPlacement": ("seemadapt.adapters", "AdapterPlacement"),
    "apply_adapters": ("seemadapt.adapters", "apply_adapters"),
    "get_strategy": ("seemadapt.adapters.strategies", "get_strategy"),
    "STRATEGIES": ("seemadapt.adapters.strategies", "STRATEGIES"),
    # training
    "TrainConfig": ("seemadapt.train.config", "TrainConfig"),
    "Trainer": ("seemadapt.train", "Trainer"),
    "Run": ("seemadapt.train", "Run"),
    # metrics
    "SemanticMetrics": ("seemadapt.metrics", "SemanticMetrics"),
    "PanopticMetrics": ("seemadapt.metrics", "PanopticMetrics"),
    "GroundingMetrics": ("seemadapt.metrics", "GroundingMetrics"),
    "format_table": ("seemadapt.metrics", "format_table"),
    "to_json": ("seemadapt.metrics", "to_json"),
    # adapter files and the Hub
    "save_adapters": ("seemadapt.hub", "save_adapters"),
    "load_adapters": ("seemadapt.adapter_files", "load_adapters"),
    "push_adapters": ("seemadapt.hub", "push_adapters"),
    "load_model": ("seemadapt.hub", "load_model"),
}

__all__ = [
    "SEEM",
    "STRATEGIES",
    "AdapterPlacement",
    "EvalResult",
    "GroundingMetrics",
    "PanopticMetrics",
    "Run",
    "SEEMConfig",
    "SemanticMetrics",
    "TrainConfig",
    "Trainer",
    "__version__",
    "apply_adapters",
    "evaluate",
    "finetune",
    "format_table",
    "get_strategy",
    "load",
    "load_adapters",
    "load_model",
    "make_contract_dataset",
    "push_adapters",
    "register",
    "save_adapters",
    "to_json",
]

if TYPE_CHECKING:
    from seemadapt.adapter_files import load_adapters
    from seemadapt.adapters import AdapterPlacement, apply_adapters
    from seemadapt.adapters.strategies import STRATEGIES, get_strategy
    from seemadapt.data.register import register
    from seemadapt.data.sources import load_source as load
    from seemadapt.evaluation import EvalResult, evaluate
    from seemadapt.finetuning import finetune
    from seemadapt.hub import load_model, push_adapters, save_adapters
    from seemadapt.metrics import GroundingMetrics, PanopticMetrics, SemanticMetrics, format_table, to_json
    from seemadapt.model.config import SEEMConfig
    from seemadapt.model.seem import SEEM
    from seemadapt.testing import make_contract_dataset
    from seemadapt.train import Run, Trainer
    from seemadapt.train.config import TrainConfig


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
