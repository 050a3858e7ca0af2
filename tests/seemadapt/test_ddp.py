"""Two CPU processes (gloo, torchrun) train one model with DDP: disjoint data, synchronised gradients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seemadapt.adapters import adapter_state_dict, apply_adapters
from seemadapt.model import SEEM

WORKER = Path(__file__).with_name("ddp_train.py")


@pytest.mark.slow
def test_two_process_ddp_ends_with_identical_trained_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(tmp_path),
        str(tmp_path / "cache"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [log["world"] for log in logs] == [2, 2]
    # Each process takes every other index of the epoch's permutation: the first epoch is split between them.
    first_epoch = [ids for log in logs for ids in log["seen"][:2]]
    assert sorted(i for ids in first_epoch for i in ids) == [0, 1, 2, 3]
    # The logged losses are averaged over both processes, so both histories agree.
    assert [h["loss"] for h in logs[0]["history"]] == pytest.approx([h["loss"] for h in logs[1]["history"]])

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert set(ranks[0]) == set(ranks[1])
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), (
            key
        )  # different data, same weights: gradients were all-reduced
    initial = SEEM.from_config("tiny")
    apply_adapters(initial, "adapter-backbone/full-head")
    start = adapter_state_dict(initial)
    assert any(not torch.equal(start[k], v) for k, v in ranks[0].items()), "the weights did not train"
