"""Process rank detection, the round-robin split, several processes sharing one folder (without a process
group: file hand-off; with one: a real 2-process torchrun run on CPU/gloo compared row by row)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from _shard_worker import FakeGenerator, tiny_config  # loaded by tests/diffsynth/conftest.py

from diffsynth.dataset import categories_of, settings_of, to_dataset
from diffsynth.distributed import (
    ProcessInfo,
    ProcessSync,
    assigned_shards,
    process_info,
    split_round_robin,
)
from diffsynth.shards import load_shards, read_manifest, run_sharded

WORKER = Path(__file__).with_name("_shard_worker.py")


def rows(ds) -> list[dict]:
    from datasets import Image

    for column in ("image", "panoptic", "semantic"):
        ds = ds.cast_column(column, Image(decode=False))
    return [ds[i] for i in range(len(ds))]


@pytest.fixture
def no_launcher(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------------------------- process info
def test_process_info_reads_the_launcher_variables(monkeypatch, no_launcher):
    assert process_info() == ProcessInfo(0, 1, 0, "single")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    info = process_info()
    assert (info.rank, info.world_size, info.local_rank, info.source) == (2, 3, 0, "env")
    assert not info.is_main and info.is_distributed
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ValueError, match="RANK='two'"):
        process_info()


def test_process_info_prefers_an_accelerate_state_already_set_up(monkeypatch, no_launcher):
    import accelerate.state

    class FakeState:
        _shared_state: ClassVar[dict] = {"set": True}
        process_index, num_processes, local_process_index = 3, 4, 1

    monkeypatch.setattr(accelerate.state, "PartialState", FakeState)
    assert process_info() == ProcessInfo(3, 4, 1, "accelerate")
    FakeState._shared_state = {}  # not set up: fall back to the (absent) launcher variables
    assert process_info() == ProcessInfo(0, 1, 0, "single")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rank": 2, "world_size": 2}, "rank=2"),
        ({"world_size": 0}, "world_size"),
        ({"local_rank": -1}, "local_rank"),
    ],
)
def test_process_info_rejects_impossible_ranks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProcessInfo(**kwargs)


def test_round_robin_split_is_disjoint_and_complete():
    for world in (1, 2, 3, 4):
        infos = [ProcessInfo(rank, world) for rank in range(world)]
        shards = [list(assigned_shards(10, info)) for info in infos]
        assert sorted(k for part in shards for k in part) == list(range(10))
        assert shards[0][:2] == ([0, world] if world < 10 else [0])
        items = [split_round_robin(list("abcdefg"), info) for info in infos]
        assert sorted(x for part in items for x in part) == list("abcdefg")


def test_single_process_sync_is_a_no_op():
    with ProcessSync(ProcessInfo(0, 1)) as sync:
        assert not sync.active
        assert sync.gather(5) == [5] and sync.broadcast("x") == "x"
        sync.barrier()


# ----------------------------------------------------------------------------- several processes, no group
def test_processes_without_a_group_hand_off_through_the_folder(tmp_path, no_launcher):
    out = tmp_path / "out"
    worker = FakeGenerator(7)
    assert run_sharded(worker, out, shard_size=2, process=ProcessInfo(1, 2)) is None
    assert worker.made == [2, 3, 6]  # shards 1 and 3
    main = FakeGenerator(7)
    ds = run_sharded(main, out, shard_size=2, process=ProcessInfo(0, 2), timeout=30)
    assert main.made == [0, 1, 4, 5]  # shards 0 and 2
    single = run_sharded(FakeGenerator(7), tmp_path / "single", shard_size=2)
    assert rows(ds) == rows(single)
    assert read_manifest(out)["status"] == "complete"


def test_the_main_process_times_out_naming_the_missing_shards(tmp_path, no_launcher):
    with pytest.raises(TimeoutError, match=r"shards \[1, 3\] of ranks \[1\]"):
        run_sharded(FakeGenerator(7), tmp_path, shard_size=2, process=ProcessInfo(0, 2), timeout=0.2)
    # What the main process made stays; a later single-process run finishes the rest.
    rest = FakeGenerator(7)
    ds = run_sharded(rest, tmp_path, shard_size=2)
    assert rest.made == [2, 3, 6] and len(ds) == 7


def test_a_run_can_resume_with_another_number_of_processes(tmp_path, no_launcher):
    part = FakeGenerator(9)
    assert run_sharded(part, tmp_path, shard_size=2, process=ProcessInfo(2, 3)) is None
    assert part.made == [4, 5]  # shard 2 of 5
    rest = FakeGenerator(9)
    ds = run_sharded(rest, tmp_path, shard_size=2)
    assert rest.made == [0, 1, 2, 3, 6, 7, 8]
    assert rows(ds) == rows(run_sharded(FakeGenerator(9), tmp_path / "single", shard_size=2))


def test_overwrite_needs_a_group_when_several_processes_share_a_folder(tmp_path, no_launcher):
    with pytest.raises(ValueError, match="overwrite=True with several processes"):
        run_sharded(FakeGenerator(2), tmp_path, shard_size=1, process=ProcessInfo(1, 2), overwrite=True)


# ---------------------------------------------------------------------------------- torchrun, 2 processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*worker_args: str) -> subprocess.Popen:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MASTER_ADDR="127.0.0.1"
    )
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(_free_port()), str(WORKER), *worker_args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_torchrun_in_a_users_process_group_and_refusing_rank_divergent_arguments(tmp_path):
    common = ["--fake", "--num-images", "7", "--shard-size", "2", "--init-group"]
    launched = _torchrun(*common, "--out", str(tmp_path / "ok"), "--made-log", str(tmp_path / "made"))
    output, _ = launched.communicate(timeout=300)
    assert launched.returncode == 0, output
    assert "rank 0 returned Dataset 7" in output and "rank 1 user group alive: True" in output
    made = {r: sorted(i for line in Path(f"{tmp_path / 'made'}.rank{r}").read_text().splitlines()
                      for i in json.loads(line)) for r in (0, 1)}  # fmt: skip
    assert made == {0: [0, 1, 4, 5], 1: [2, 3, 6]}
    assert rows(load_shards(tmp_path / "ok")) == rows(
        run_sharded(FakeGenerator(7), tmp_path / "single", shard_size=2)
    )

    launched = _torchrun(*common, "--seed-per-rank", "--out", str(tmp_path / "bad"))
    output, _ = launched.communicate(timeout=300)
    assert launched.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank} refused: rank 1 was started with other arguments than rank 0" in output, output
    assert "seed: rank 0 has 0, rank 1 has 1" in output
    assert not (tmp_path / "bad" / "data").exists()  # refused before anything was written


@pytest.mark.slow
def test_two_processes_under_torchrun_equal_a_single_process_run(tmp_path):
    from diffsynth import Generator

    out, log = tmp_path / "out", tmp_path / "made"
    launched = _torchrun("--out", str(out), "--num-images", "5", "--shard-size", "2", "--made-log", str(log))
    # The single-process reference runs meanwhile.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = Generator(tiny_config(5), progress=False)
        expected = to_dataset(generator.run(), generator.categories, generator.settings())
    finally:
        torch.set_num_threads(threads)
    output, _ = launched.communicate(timeout=500)
    assert launched.returncode == 0, output
    assert "rank 0 returned Dataset 5" in output and "rank 1 returned NoneType" in output
    assert (
        "rank 0 barrier with process group: True" in output
        and "rank 1 barrier with process group: True" in output
    )

    made = {}
    for rank in (0, 1):
        lines = Path(f"{log}.rank{rank}").read_text().splitlines()
        made[rank] = [i for line in lines for i in json.loads(line)]
    assert sorted(made[0]) == [0, 1, 4] and sorted(made[1]) == [
        2,
        3,
    ]  # shards 0, 2 -> rank 0; shard 1 -> rank 1

    merged = load_shards(out)
    assert merged["image_id"] == list(range(5))
    assert settings_of(merged)["quality"]["mean_overall"] == pytest.approx(
        settings_of(expected)["quality"]["mean_overall"], rel=1e-9
    )
    assert categories_of(merged) == generator.categories
    assert read_manifest(out)["world_size"] == 2
    for i, (a, b) in enumerate(zip(rows(merged), rows(expected))):
        for column in ("image", "panoptic", "segments_info", "semantic", "prompt", "seed", "quality"):
            assert a[column] == b[column], f"row {i} column {column} differs"
