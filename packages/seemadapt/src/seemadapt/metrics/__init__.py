"""Evaluation metrics on predictions and ground truth: semantic (IoU, precision, recall), panoptic (PQ),
instance (COCO mask AP), grounding (mIoU, cIoU, precision@t), and their tables / JSON.

Every metric is a streaming accumulator: ``update()`` per image or batch, ``all_reduce()`` across
``torch.distributed`` processes, ``compute()`` for a frozen results object (fractions in [0, 1]).
"""

from .grounding import GroundingMetrics, GroundingResults
from .instance import InstanceClassResult, InstanceMetrics, InstanceResults
from .panoptic import PanopticClassResult, PanopticMetrics, PanopticResults, PQScore
from .report import format_table, to_json
from .semantic import SemanticMetrics, SemanticResults

__all__ = [
    "GroundingMetrics",
    "GroundingResults",
    "InstanceClassResult",
    "InstanceMetrics",
    "InstanceResults",
    "PQScore",
    "PanopticClassResult",
    "PanopticMetrics",
    "PanopticResults",
    "SemanticMetrics",
    "SemanticResults",
    "format_table",
    "to_json",
]
