"""Sum metric state across ``torch.distributed`` processes.

Every metric keeps its whole state as sums (a confusion matrix, per-class PQ counts, IoU sums), so the
result on N processes is the sum of the N states: one ``all_reduce`` and no gathering of predictions.
"""

from __future__ import annotations

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
