"""Worker for test_ddp.py: one process of a 2-process CPU (gloo) fine-tuning run, launched by torchrun.

Writes ``rank<r>.pt`` (the trained adapter weights) and ``rank<r>.json`` (the image ids each step used) into the
output folder given as the first argument; the second argument is the dataset cache folder.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from seemadapt.adapters import adapter_state_dict
from seemadapt.finetuning import finetune
from seemadapt.testing import make_contract_dataset
from seemadapt.train import Trainer


def main() -> None:
    out, cache = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    seen: list[list[int]] = []
    original = Trainer._losses

    def recording(self, accelerator, prepared, criterion, batch, step, micro):
        seen.append([int(record["image_id"]) for record in batch])
        return original(self, accelerator, prepared, criterion, batch, step, micro)

    Trainer._losses = recording
    run = finetune(
        make_contract_dataset(4, size=(64, 64)),
        model="tiny",
        strategy="adapter-backbone/full-head",
        max_steps=3,
        batch_size=1,
        image_size=64,
        num_workers=0,
        tracker=None,
        progress=False,
        criterion={"num_points": 512},
        lr=1e-3,
        log_every=1,
        output_dir=str(out / "run"),
        cache_dir=cache,
    )
    weights = {k: v.detach().cpu().clone() for k, v in adapter_state_dict(run.model).items()}
    torch.save(weights, out / f"rank{rank}.pt")
    world = int(os.environ["WORLD_SIZE"])
    (out / f"rank{rank}.json").write_text(json.dumps({"seen": seen, "world": world, "history": run.history}))


if __name__ == "__main__":
    main()
