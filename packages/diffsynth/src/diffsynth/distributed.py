"""Which process am I, which samples are mine, and how processes wait for each other.

Generation splits work by *shard*, not by process: shard ``k`` goes to rank ``k % world_size``
(:func:`assigned_shards`), so shard contents never depend on the number of processes and a run can be resumed
with a different one. The rank comes from an initialised ``torch.distributed`` group, else an initialised
accelerate ``PartialState``, else the ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` variables that ``torchrun`` and
``accelerate launch`` set. Nothing here starts CUDA or joins a group by itself except :class:`ProcessSync`.

:class:`ProcessSync` gives the few collective steps generation needs (one start hand-shake, one barrier at the
end) on a *gloo* group with a long timeout: processes may finish their shards hours apart (a resumed run
leaves some ranks little to do), which would trip NCCL's default watchdog on a GPU group.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import accelerate.state
import torch
import torch.distributed as dist

__all__ = [
    "ProcessInfo",
    "ProcessSync",
    "assigned_shards",
    "process_device",
    "process_info",
    "split_round_robin",
]

T = TypeVar("T")

#: Default wait for the slowest process at the end of a run (generation of a large shard set can take days).
DEFAULT_TIMEOUT = datetime.timedelta(hours=48)


@dataclass(frozen=True)
class ProcessInfo:
    """Rank, world size and local rank (the GPU index on its machine) of this process.

    ``source`` says where they came from: ``"torch.distributed"``, ``"accelerate"``, ``"env"``, ``"single"``
    or ``"explicit"`` (built by the caller, e.g. one task of a Slurm array).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "explicit"

    def __post_init__(self) -> None:
        for name in ("rank", "world_size", "local_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"ProcessInfo.{name} must be an int, got {value!r}.")
        if self.world_size < 1:
            raise ValueError(f"ProcessInfo.world_size must be >= 1, got {self.world_size}.")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"ProcessInfo.rank={self.rank} must be in 0..world_size-1 ({self.world_size - 1})."
            )
        if self.local_rank < 0:
            raise ValueError(f"ProcessInfo.local_rank must be >= 0, got {self.local_rank}.")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the manifest, merges the shards and pushes."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not an integer; unset it or launch with torchrun / "
            "accelerate launch, which set it."
        ) from None


def process_info() -> ProcessInfo:
    """This process's rank and world size (see the module docstring for the order of sources)."""
    if dist.is_available() and dist.is_initialized():
        return ProcessInfo(
            dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), "torch.distributed"
        )
    partial_state = accelerate.state.PartialState  # looked up per call: tests swap it
    # already set up by the user's Accelerator / PartialState? (accelerate's state is a class-level dict; asking an
    # instance, its only public check, would set it up)
    if partial_state._shared_state:
        state = partial_state()
        return ProcessInfo(
            int(state.process_index),
            int(state.num_processes),
            int(state.local_process_index),
            "accelerate",
        )
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size > 1:
        return ProcessInfo(_env_int("RANK", 0), world_size, _env_int("LOCAL_RANK", 0), "env")
    return ProcessInfo(0, 1, 0, "single")


def process_device(info: ProcessInfo | None = None) -> str:
    """The device this process should draw on: its own GPU (``cuda:<local_rank>``) if there is one, else CPU."""
    info = info or process_info()
    if torch.cuda.is_available():
        return f"cuda:{info.local_rank % torch.cuda.device_count()}"
    return "cpu"


def assigned_shards(num_shards: int, info: ProcessInfo) -> range:
    """Shards of this process: ``k`` with ``k % world_size == rank`` (disjoint, together all of them)."""
    if num_shards < 0:
        raise ValueError(f"num_shards must be >= 0, got {num_shards}.")
    return range(info.rank, num_shards, info.world_size)


def split_round_robin(items: Sequence[T], info: ProcessInfo) -> list[T]:
    """``items[rank::world_size]``: the same round-robin rule as :func:`assigned_shards`, for any list."""
    return list(items[info.rank :: info.world_size])


class ProcessSync:
    """Start hand-shake and end barrier for the processes of one run.

    With one process it does nothing. With several it needs a rendezvous: an initialised ``torch.distributed``
    group (any backend; a gloo sub-group with ``timeout`` is made for our waits) or the ``MASTER_ADDR`` /
    ``MASTER_PORT`` that torchrun and accelerate launch export (a gloo group is then started here and destroyed
    by :meth:`close`). Without either, :attr:`active` is False and callers fall back to waiting on files.
    """

    def __init__(self, info: ProcessInfo, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> None:
        self.info = info
        self.timeout = timeout
        self.group: Any = None
        self._owns_default_group = False
        self.active = False
        if info.world_size == 1:
            return
        if not dist.is_available():  # pragma: no cover - every torch wheel we support has it
            return
        if dist.is_initialized():
            if dist.get_world_size() != info.world_size or dist.get_rank() != info.rank:
                raise ValueError(
                    f"ProcessInfo(rank={info.rank}, world_size={info.world_size}) disagrees with the initialised "
                    f"torch.distributed group (rank {dist.get_rank()} of {dist.get_world_size()}); leave "
                    "`process` unset to use the group's ranks."
                )
            self.group = dist.new_group(backend="gloo", timeout=timeout)
            self.active = True
        elif os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
            dist.init_process_group(
                backend="gloo",
                init_method="env://",
                rank=info.rank,
                world_size=info.world_size,
                timeout=timeout,
            )
            self._owns_default_group = True
            self.active = True

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (``value`` itself without a group)."""
        if not self.active:
            return value
        box = [value if self.info.is_main else None]
        dist.broadcast_object_list(box, src=self._global_rank(0), group=self.group)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank (``[value]`` without a group)."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(out, value, group=self.group)
        return out

    def barrier(self) -> None:
        """Wait for every rank (up to ``timeout``); the error names the ranks that did not arrive."""
        if not self.active:
            return
        dist.monitored_barrier(group=self.group, timeout=self.timeout, wait_all_ranks=True)

    def close(self) -> None:
        """Destroy what this object created (our gloo sub-group, or the default group if we started it)."""
        if not self.active:
            return
        if self._owns_default_group:
            dist.destroy_process_group()
        elif self.group is not None:
            dist.destroy_process_group(self.group)
        self.group = None
        self.active = False

    def _global_rank(self, group_rank: int) -> int:
        if self.group is None:
            return group_rank
        return dist.get_global_rank(self.group, group_rank)

    def __enter__(self) -> ProcessSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
