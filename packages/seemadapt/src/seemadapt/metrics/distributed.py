"""Sum (or gather) metric state across ``torch.distributed`` processes, and the summed metrics' base class.

Most metrics keep their whole state as sums (a confusion matrix, per-class PQ counts, IoU sums), so the
result on N processes is the sum of the N states: one ``all_reduce`` and no gathering of predictions. COCO AP
is the exception: its per-image records are gathered.
"""

from __future__ import annotations

from typing import Any, Self

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_across_processes(state: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """A new tensor with ``state`` summed over all processes (a copy of it when not distributed).

    ``device`` is where the collective runs. By default that is the CPU, except with the NCCL backend,
    which only reduces CUDA tensors: there it is the current CUDA device of this process.
    """
    if not is_distributed():
        return state.clone()
    if device is None:
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
    buffer = state.to(device=device, copy=True)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(state.device)


class SummedMetric:
    """Base of the streaming metrics, whose whole state is one tensor of sums: merging two accumulators and
    reducing across processes are then additions, written once here.

    A subclass stores its constructor arguments in ``settings`` (two accumulators add up only when these agree,
    and :meth:`all_reduce` builds the empty one it fills from them) and its sums in ``sums``.
    """

    def __init__(self, sums: torch.Tensor, **settings: Any) -> None:
        self.sums = sums
        self.settings = settings

    def reset(self) -> None:
        self.sums.zero_()

    def merge(self, other: Self) -> Self:
        """Add another accumulator's sums (same settings) into this one; returns ``self``."""
        if type(other) is not type(self) or other.settings != self.settings:
            raise ValueError(
                f"merge() needs a {type(self).__name__} with the same {', '.join(self.settings)}."
            )
        self.sums += other.sums
        return self

    def all_reduce(self, device: torch.device | str | None = None) -> Self:
        """A new accumulator holding the sums of every ``torch.distributed`` process (this one's if not
        distributed). Call it on every process; ``self`` is left as it is, so calling twice is safe."""
        reduced = type(self)(**self.settings)
        reduced.sums = sum_across_processes(self.sums, device)
        return reduced


def gather_across_processes(state: Any) -> list[Any]:
    """Every process's ``state`` (any picklable object), in rank order; ``[state]`` when not distributed.

    For metrics that are not sums (COCO AP needs every image's detections).
    """
    if not is_distributed():
        return [state]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered
