"""The training data loader: mapped records in a seeded per-epoch order, resumable mid-stream.

:class:`~seemadapt.data.EpochSampler` gives each process its share of a seeded per-epoch permutation and the loader
batches consecutive indices in the main process, so batches do not depend on ``num_workers`` and resuming skips
exactly the consumed samples. That is why the loader is not passed through ``accelerator.prepare`` (which would shard
it a second time).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch

from seemadapt.data import EpochSampler, trivial_batch_collator
from seemadapt.train.config import TrainConfig

__all__ = ["MappedDataset", "SkipSampler", "train_batches"]


class MappedDataset(torch.utils.data.Dataset):
    """``mapper(dataset[i])``: the mapping runs in the loader's workers."""

    def __init__(self, dataset: torch.utils.data.Dataset, mapper: Any) -> None:
        self.dataset = dataset
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        return self.mapper(self.dataset[index])


class SkipSampler(torch.utils.data.Sampler):
    """The first ``skip`` indices of ``sampler`` left out (resuming mid-stream)."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int) -> None:
        self.sampler = sampler
        self.skip = int(skip)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)


def train_batches(
    records: torch.utils.data.Dataset, mapper: Any, config: TrainConfig, start_step: int
) -> Iterator[list[dict]]:
    """Mapped micro-batches from optimizer step ``start_step`` on (the samples of earlier steps are skipped)."""
    sampler = EpochSampler(len(records), seed=config.seed)
    consumed = start_step * config.grad_accum * config.batch_size
    batches = torch.utils.data.BatchSampler(SkipSampler(sampler, consumed), config.batch_size, drop_last=True)
    loader = torch.utils.data.DataLoader(
        MappedDataset(records, mapper),
        batch_sampler=batches,
        num_workers=config.num_workers,
        collate_fn=trivial_batch_collator,
        persistent_workers=config.num_workers > 0,
    )
    return iter(loader)
