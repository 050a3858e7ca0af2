"""Sharded, resumable generation: atomic shards, manifest, resume (also after a real SIGKILL), refusal of a
folder of another run, streaming, memory that stays flat, and pushing straight from the shards (mocked Hub)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from _shard_worker import FakeGenerator, tiny_config  # loaded by tests/diffsynth/conftest.py
from datasets import Dataset, Image, IterableDataset, load_dataset

from diffsynth.dataset import categories_of, settings_of, to_dataset
from diffsynth.distributed import ProcessInfo, assigned_shards
from diffsynth.schema import decode_attention
from diffsynth.shards import (
    MANIFEST,
    ShardLayout,
    ShardMismatchError,
    load_shards,
    read_manifest,
    run_fingerprint,
    run_sharded,
    stage_shards,
)

WORKER = Path(__file__).with_name("_shard_worker.py")

COMPARED = (
    "image",
    "image_id",
    "file_name",
    "panoptic",
    "segments_info",
    "semantic",
    "grounding",
    "prompt",
    "seed",
    "quality",
)


def raw_rows(ds) -> list[dict]:
    """Rows with image columns as encoded bytes, so comparisons are byte for byte."""
    for column in ("image", "panoptic", "semantic"):
        ds = ds.cast_column(column, Image(decode=False))
    return [ds[i] for i in range(len(ds))] if isinstance(ds, Dataset) else list(ds)


def assert_same_rows(a, b) -> None:
    rows_a, rows_b = raw_rows(a), raw_rows(b)
    assert len(rows_a) == len(rows_b)
    for i, (x, y) in enumerate(zip(rows_a, rows_b)):
        for column in COMPARED:
            assert x[column] == y[column], f"row {i} column {column} differs"


def assert_same_settings(a: dict, b: dict) -> None:
    """Equal settings; floats (e.g. a mean quality summed shard by shard) to 1e-9."""
    assert a.keys() == b.keys(), (a.keys(), b.keys())
    for key in a:
        if isinstance(a[key], dict):
            assert_same_settings(a[key], b[key])
        elif isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=1e-9), key
        else:
            assert a[key] == b[key], key


def reset_counters(generator) -> None:
    """Zero the generator's running counters (as if freshly built)."""
    stats = generator.quality_stats
    stats.update({k: type(v)() for k, v in stats.items()})


def reference(generator) -> Dataset:
    """The in-memory dataset of a fresh generator (what ``generate()`` without ``output_dir`` returns)."""
    reset_counters(generator)
    samples = generator.make_samples(generator.plans)
    settings = generator.settings()
    generator.made.clear()
    reset_counters(generator)
    return to_dataset(samples, generator.categories, settings, with_attention=generator.config.with_attention)


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


# ------------------------------------------------------------------------------------------------------ layout
@pytest.mark.parametrize("num_images,shard_size", [(1, 1), (7, 3), (9, 3), (10, 100), (23, 4)])
def test_layout_cuts_every_sample_into_exactly_one_shard(num_images, shard_size):
    layout = ShardLayout(num_images, shard_size)
    covered = [i for k in range(layout.num_shards) for i in range(*layout.bounds(k))]
    assert covered == list(range(num_images))
    assert all(layout.bounds(k)[1] - layout.bounds(k)[0] <= shard_size for k in range(layout.num_shards))
    for world in (1, 2, 3, 5):
        owned = [
            k for rank in range(world) for k in assigned_shards(layout.num_shards, ProcessInfo(rank, world))
        ]
        assert sorted(owned) == list(range(layout.num_shards))  # disjoint, none dropped
        assert all(
            k % world == rank
            for rank in range(world)
            for k in assigned_shards(layout.num_shards, ProcessInfo(rank, world))
        )
    assert layout.file_name(0).startswith("train-00000-of-")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_layout_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="shard_size"):
        ShardLayout(10, bad)


def test_fingerprint_ignores_how_a_run_is_executed_but_not_what_it_makes():
    base, _ = run_fingerprint(FakeGenerator(5))
    assert run_fingerprint(FakeGenerator(5, batch_size=4, device="cpu"))[0] == base
    assert run_fingerprint(FakeGenerator(9))[0] == base  # num_images is compared on its own
    assert run_fingerprint(FakeGenerator(5, seed=1))[0] != base
    assert run_fingerprint(FakeGenerator(5, steps=3))[0] != base


# ------------------------------------------------------------------------------------------------------ the run
def test_run_writes_shards_and_manifest_and_equals_the_in_memory_dataset(tmp_path):
    generator = FakeGenerator(7)
    expected = reference(generator)
    ds = run_sharded(generator, tmp_path / "out", shard_size=3)

    assert isinstance(ds, Dataset) and len(ds) == 7 and ds["image_id"] == list(range(7))
    assert_same_rows(ds, expected)
    assert categories_of(ds) == generator.categories
    assert settings_of(ds) == settings_of(expected)  # run counters summed over the shards: mean quality too
    assert "mean_overall" in settings_of(ds)["quality"]
    data = tmp_path / "out" / "data"
    assert sorted(p.name for p in data.iterdir()) == [f"train-0000{k}-of-00003.parquet" for k in range(3)]
    assert temp_files(tmp_path / "out") == []
    manifest = read_manifest(tmp_path / "out")
    assert manifest["status"] == "complete" and manifest["num_images"] == 7 and manifest["shard_size"] == 3
    assert [(s["start"], s["stop"], s["rows"]) for s in manifest["shards"]] == [
        (0, 3, 3),
        (3, 6, 3),
        (6, 7, 1),
    ]
    assert [s["stats"]["scored"] for s in manifest["shards"]] == [3, 3, 1]
    assert manifest["fingerprint"] == run_fingerprint(generator)[0]
    assert json.loads((tmp_path / "out" / "categories.json").read_text())["categories"][0]["name"] == "cat"
    # The folder is a Hub-style dataset by itself.
    again = load_dataset(str(tmp_path / "out"), split="train")
    assert categories_of(again) == generator.categories and len(again) == 7


def test_attention_column_survives_the_shards(tmp_path):
    generator = FakeGenerator(3, with_attention=True)
    expected = generator.make_samples(generator.plans)
    ds = run_sharded(generator, tmp_path / "out", shard_size=2)
    assert "attention" in ds.column_names
    for sample, row in zip(expected, ds):
        assert np.allclose(decode_attention(row["attention"]), sample.soft_maps, atol=0.5 / 255 + 1e-6)


def test_resume_makes_only_missing_shards_and_removes_leftovers(tmp_path, caplog):
    out = tmp_path / "out"
    first = run_sharded(FakeGenerator(7), out, shard_size=3)
    data = out / "data"
    (data / "train-00001-of-00003.parquet").unlink()  # never finished
    (data / ".train-00001-of-00003.parquet.host-123.tmp").write_bytes(b"PAR1 half a shard")  # killed writer
    (data / "train-00002-of-00003.parquet").write_bytes(b"PAR1 garbage")  # damaged by hand
    (out / ".manifest.json.host-123.tmp").write_text("{")

    generator = FakeGenerator(7)
    resumed = run_sharded(generator, out, shard_size=3)
    assert generator.made == [3, 4, 5, 6]  # shard 0 was kept
    assert "unreadable or incomplete" in caplog.text
    assert temp_files(out) == []
    assert_same_rows(resumed, first)
    assert settings_of(resumed) == settings_of(first)

    finished = FakeGenerator(7)
    assert len(run_sharded(finished, out, shard_size=3)) == 7
    assert finished.made == []  # a complete folder only merges
    batched = FakeGenerator(7, batch_size=2)  # batch size may change between runs
    assert len(run_sharded(batched, out, shard_size=3)) == 7 and batched.made == []


def test_error_mid_shard_leaves_no_partial_file_and_the_rerun_finishes(tmp_path):
    out = tmp_path / "out"
    broken = FakeGenerator(6)
    draw = broken.make_samples

    def failing(plans):
        if plans[0].index == 4:
            raise RuntimeError("GPU fell off")
        return draw(plans)

    broken.make_samples = failing
    with pytest.raises(RuntimeError, match="fell off"):
        run_sharded(broken, out, shard_size=3)
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000-of-00002.parquet"]
    assert read_manifest(out)["status"] == "running"

    healthy = FakeGenerator(6)
    ds = run_sharded(healthy, out, shard_size=3)
    assert healthy.made == [3, 4, 5]
    assert_same_rows(ds, reference(FakeGenerator(6)))


def test_other_arguments_are_refused_naming_the_fields_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    run_sharded(FakeGenerator(6), out, shard_size=3)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()}

    with pytest.raises(ShardMismatchError, match=r"masker\.num_inference_steps: folder has 2, now 3"):
        run_sharded(FakeGenerator(6, steps=3), out, shard_size=3)
    with pytest.raises(ShardMismatchError, match="num_images: folder has 6, now 8"):
        run_sharded(FakeGenerator(8), out, shard_size=3)
    with pytest.raises(ShardMismatchError, match="shard_size: folder has 3, now 2"):
        run_sharded(FakeGenerator(6), out, shard_size=2)
    with pytest.raises(ShardMismatchError, match=r"seed: folder has 0, now 5"):
        run_sharded(FakeGenerator(6, seed=5), out, shard_size=3)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()} == before  # nothing touched

    generator = FakeGenerator(4, steps=3)
    ds = run_sharded(generator, out, shard_size=2, overwrite=True)
    assert generator.made == [0, 1, 2, 3] and len(ds) == 4
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        f"train-0000{k}-of-00002.parquet" for k in range(2)
    ]
    assert read_manifest(out)["fingerprint"] == run_fingerprint(generator)[0]


def test_a_shard_of_another_run_is_never_mixed_in(tmp_path):
    run_sharded(FakeGenerator(4, seed=1), tmp_path / "a", shard_size=2)
    run_sharded(FakeGenerator(4), tmp_path / "b", shard_size=2)
    name = "train-00001-of-00002.parquet"
    os.replace(tmp_path / "a" / "data" / name, tmp_path / "b" / "data" / name)
    with pytest.raises(ShardMismatchError, match="belongs to another run"):
        run_sharded(FakeGenerator(4), tmp_path / "b", shard_size=2)
    with pytest.raises(ShardMismatchError, match="belongs to another run"):
        load_shards(tmp_path / "b")


def test_a_folder_that_is_not_ours_is_refused_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    generator = FakeGenerator(2)
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        run_sharded(generator, tmp_path, shard_size=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and generator.made == []


def test_load_shards_names_missing_shards(tmp_path):
    run_sharded(FakeGenerator(5), tmp_path, shard_size=2)
    (tmp_path / "data" / "train-00001-of-00003.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"shards \[1\]"):
        load_shards(tmp_path)


def test_streaming_returns_an_iterable_dataset_with_the_categories(tmp_path):
    generator = FakeGenerator(5)
    expected = reference(generator)
    stream = run_sharded(generator, tmp_path, shard_size=2, streaming=True)
    assert isinstance(stream, IterableDataset)
    assert categories_of(stream) == generator.categories
    assert not (tmp_path / ".cache").exists()  # no Arrow copy
    assert_same_rows(stream, expected)


def test_memory_stays_flat_as_the_run_grows(tmp_path):
    """Python-side peak (tracemalloc sees numpy and PIL buffers) must not grow with the number of images."""

    def peak(num_images: int) -> int:
        generator = FakeGenerator(num_images, size=128)
        tracemalloc.start()
        run_sharded(generator, tmp_path / f"run{num_images}", shard_size=8, streaming=True)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    peak(2)  # first call pays one-off imports and caches
    small, large = peak(8), peak(96)
    one_image = 128 * 128 * 3
    # Keeping the 96 samples would add > 96 images (and their masks); allow a few images of noise.
    assert large < small + 8 * one_image, (small, large)


# -------------------------------------------------------------------------------------------------------- hub
class FakeApi:
    calls: ClassVar[list] = []
    target: ClassVar[Path]

    def __init__(self, token=None):
        self.token = token

    def whoami(self):
        return {"name": "me", "orgs": [], "auth": {"accessToken": {"role": "write"}}}

    def create_repo(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, folder_path, **kwargs):
        import shutil

        shutil.copytree(folder_path, FakeApi.target)
        FakeApi.calls.append(("upload_folder", kwargs))
        return "commit-info"


def test_push_to_hub_straight_from_the_shards(tmp_path, monkeypatch):
    from diffsynth import hub

    FakeApi.calls, FakeApi.target = [], tmp_path / "uploaded"
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub.hub_constants, "HF_HUB_OFFLINE", False)  # the push check asks the (fake) Hub
    token = "hf_abcdefghijklmnopqrstuvwxyz0123456789"
    generator = FakeGenerator(7)
    ds = run_sharded(
        generator,
        tmp_path / "out",
        shard_size=3,
        push_to_hub={"repo_id": "me/synthetic", "token": token, "private": True, "max_shard_bytes": 1},
    )
    (create, repo_id, kwargs), (upload, upload_kwargs) = FakeApi.calls
    assert upload == "upload_folder"
    assert (create, repo_id, kwargs["repo_type"], kwargs["private"]) == (
        "create_repo",
        "me/synthetic",
        "dataset",
        True,
    )
    assert upload_kwargs["repo_id"] == "me/synthetic" and upload_kwargs["delete_patterns"] == ["data/train-*"]

    uploaded = FakeApi.target
    files = sorted(p.name for p in (uploaded / "data").iterdir())
    assert files == [
        f"train-0000{k}-of-00003.parquet" for k in range(3)
    ]  # tiny max size: one file per row group
    for name in files:  # per-shard bookkeeping stays home
        keys = set(pq.read_metadata(uploaded / "data" / name).metadata)
        assert not {b"diffsynth_shard", b"diffsynth_stats"} & keys
    for name in ("README.md", "categories.json", "id2label.json", "health.json", "preview.png"):
        assert (uploaded / name).is_file(), name
    assert "dataset_info" in (uploaded / "README.md").read_text()
    for path in uploaded.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    back = load_dataset(str(uploaded), split="train")
    assert categories_of(back) == generator.categories and settings_of(back) == generator.settings()
    assert_same_rows(back, ds)


def test_staging_refuses_bad_split_names_and_incomplete_folders(tmp_path):
    run_sharded(FakeGenerator(3), tmp_path / "out", shard_size=2)
    with pytest.raises(ValueError, match="split="):
        stage_shards(tmp_path / "out", tmp_path / "repo", split="train/0")
    (tmp_path / "out" / "data" / "train-00000-of-00002.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        stage_shards(tmp_path / "out", tmp_path / "repo")


def test_a_bad_repo_id_fails_before_anything_is_drawn(tmp_path):
    generator = FakeGenerator(2)
    with pytest.raises(ValueError, match="user/name"):
        run_sharded(generator, tmp_path / "out", shard_size=1, push_to_hub="a/b/c")
    assert generator.made == [] and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- real pipeline, real SIGKILL
@pytest.fixture(scope="module")
def tiny_generator():
    from diffsynth import Generator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    generator = Generator(tiny_config(6), progress=False)
    generator.made = []
    draw = generator.make_samples

    def make_samples(plans):
        generator.made.extend(p.index for p in plans)
        return draw(plans)

    generator.make_samples = make_samples
    yield generator
    torch.set_num_threads(threads)


def _worker_env() -> dict:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1"
    )
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
def test_sigkill_mid_shard_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_generator):
    killed = tmp_path / "killed"
    worker = subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "--out",
            str(killed),
            "--num-images",
            "6",
            "--shard-size",
            "2",
            "--sleep",
            "1.0",
        ],
        env=_worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        # Meanwhile, the uninterrupted runs: in memory, and sharded in another folder.
        reset_counters(tiny_generator)
        expected = to_dataset(tiny_generator.run(), tiny_generator.categories, tiny_generator.settings())
        uninterrupted = run_sharded(tiny_generator, tmp_path / "uninterrupted", shard_size=2)
        assert_same_rows(uninterrupted, expected)

        first = killed / "data" / "train-00000-of-00003.parquet"
        deadline = time.monotonic() + 400
        while not first.exists():
            assert worker.poll() is None, worker.stdout.read().decode()
            assert time.monotonic() < deadline, "the worker wrote no shard in time"
            time.sleep(0.05)
        time.sleep(0.3)  # now inside shard 1: its temporary file is open
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=60) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.stdout.close()

    left = sorted(p.name for p in (killed / "data").iterdir())
    assert "train-00000-of-00003.parquet" in left and "train-00002-of-00003.parquet" not in left
    assert any(n.startswith(".train-00001-of-00003.parquet.") and n.endswith(".tmp") for n in left), left

    tiny_generator.made.clear()
    resumed = run_sharded(tiny_generator, killed, shard_size=2)
    done_before = [2 * k + i for k in range(3) if f"train-0000{k}-of-00003.parquet" in left for i in range(2)]
    assert sorted(tiny_generator.made) == sorted(set(range(6)) - set(done_before))
    assert temp_files(killed) == []
    assert len(resumed) == 6 and resumed["image_id"] == list(range(6))
    assert_same_rows(resumed, expected)
    assert categories_of(resumed) == tiny_generator.categories
    assert settings_of(resumed) == settings_of(uninterrupted)
    assert_same_settings(settings_of(resumed), settings_of(expected))
    assert "quality" in resumed.column_names and "mean_overall" in settings_of(resumed)["quality"]


@pytest.mark.slow
def test_generate_with_output_dir_goes_through_the_shards(tmp_path, tiny_generator):
    from diffsynth import generate

    pipe = tiny_generator.masker.pipe
    options = dict(num_inference_steps=2, height=64, width=64, seed=3, progress=False)
    in_memory = generate(["cat", "dog"], 3, pipe, **options)
    sharded = generate(["cat", "dog"], 3, pipe, output_dir=tmp_path / "out", **options)
    assert (tmp_path / "out" / MANIFEST).is_file()
    assert_same_rows(sharded, in_memory)
