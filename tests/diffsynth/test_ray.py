"""The Ray engine on a local Ray instance (2 CPUs): 2 actors on the tiny pipeline equal a single-process run row by
row, a killed actor is restarted and the run stays complete and identical, a sample failing twice is reported by
index, and running the same call again resumes (a local folder, ``file://`` and ``memory://``)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import fsspec
import pytest
from _shard_worker import (  # loaded by tests/diffsynth/conftest.py
    FakeGenerator,
    RayTestGenerator,
    tiny_config,
)

from diffsynth import Generator, generate
from diffsynth.dataset import settings_of
from diffsynth.generation import generate_from_config
from diffsynth.shards import load_shards, read_manifest, run_sharded

ray = pytest.importorskip("ray")
diffsynth_ray = pytest.importorskip("diffsynth.ray")

HERE = Path(__file__).resolve().parent
COLUMNS = ("image", "image_id", "panoptic", "segments_info", "semantic", "prompt", "seed", "quality")


def rows(ds) -> list[dict]:
    """Rows with undecoded images (bytes compared as they are stored), works for streamed datasets too."""
    from datasets import Image

    for column in ("image", "panoptic", "semantic"):
        ds = ds.cast_column(column, Image(decode=False))
    return [{c: row[c] for c in COLUMNS} for row in ds]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of 2 CPUs whose workers can import this folder's ``_shard_worker``."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), saved) if p)
    # address="local": a new instance even when this machine also runs (or ran) a `ray start` cluster.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def test_the_engine_checks_its_settings_and_needs_an_output_folder():
    with pytest.raises(ValueError, match="num_actors"):
        diffsynth_ray.RayEngine(num_actors=0)
    with pytest.raises(ValueError, match="max_retries"):
        diffsynth_ray.RayEngine(max_retries=-1)
    with pytest.raises(TypeError, match="engine= needs output_dir="):
        generate_from_config(tiny_config(2), engine=diffsynth_ray.RayEngine())
    with pytest.raises(TypeError, match="not a loaded object"):
        generate(["cat"], 1, object(), output_dir="memory://x", engine=diffsynth_ray.RayEngine())


@pytest.mark.slow
def test_two_actors_equal_a_single_process_run_and_the_same_call_resumes(tmp_path, local_ray):
    expected = run_sharded(Generator(tiny_config(5), progress=False), tmp_path / "single", shard_size=2)
    call = {
        "output_dir": tmp_path / "ray",
        "seed": 3,
        "num_inference_steps": 2,
        "height": 64,
        "width": 64,
        "shard_size": 2,
        "num_actors": 2,
        "progress": False,
    }
    ds = diffsynth_ray.generate(["cat", "dog"], 5, **call)

    manifest = read_manifest(tmp_path / "ray")
    assert manifest["status"] == "complete" and manifest["engine"] == "ray" and manifest["world_size"] == 2
    assert manifest["fingerprint"] == read_manifest(tmp_path / "single")["fingerprint"]
    assert ds["image_id"] == list(range(5))
    assert rows(ds) == rows(expected)
    assert settings_of(ds)["quality"]["mean_overall"] == pytest.approx(
        settings_of(expected)["quality"]["mean_overall"], rel=1e-9
    )

    data = tmp_path / "ray" / "data"
    kept = data / "train-00000-of-00003.parquet"
    stamp = kept.stat().st_mtime_ns
    (data / "train-00001-of-00003.parquet").unlink()  # as if the driver had died before this shard came back
    resumed = diffsynth_ray.generate(["cat", "dog"], 5, **call)
    assert kept.stat().st_mtime_ns == stamp  # finished shards are kept, not drawn again
    assert rows(resumed) == rows(expected)
    assert rows(load_shards(tmp_path / "ray")) == rows(expected)


@pytest.mark.slow
def test_a_killed_actor_is_restarted_and_the_run_stays_complete_and_identical(tmp_path, local_ray):
    expected = run_sharded(Generator(tiny_config(6), progress=False), tmp_path / "single", shard_size=1)
    engine = diffsynth_ray.RayEngine(num_actors=2, make_generator=RayTestGenerator(sleep=1.0))
    url = f"file://{tmp_path / 'killed'}"
    result: dict = {}

    def run() -> None:
        try:
            result["ds"] = generate_from_config(
                tiny_config(6), output_dir=url, engine=engine, shard_size=1, progress=False
            )
        except BaseException as error:  # reported by the assertions below
            result["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    data = tmp_path / "killed" / "data"
    deadline = time.monotonic() + 400
    while not list(data.glob("train-*.parquet")) and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    names = [n for n in ray.util.list_named_actors() if n.startswith(diffsynth_ray.ACTOR_PREFIX)]
    done_at_kill = len(list(data.glob("train-*.parquet")))
    assert names and done_at_kill < 6, (names, done_at_kill)
    ray.kill(ray.get_actor(names[0]), no_restart=False)  # Ray restarts it and retries its shard
    thread.join(timeout=500)

    assert "error" not in result, result.get("error")
    ds = result["ds"]
    assert ds["image_id"] == list(range(6))
    assert rows(ds) == rows(expected)
    assert read_manifest(tmp_path / "killed")["status"] == "complete"


@pytest.mark.slow
def test_a_sample_failing_twice_is_reported_by_index_and_a_rerun_finishes_in_memory(tmp_path, local_ray):
    url = "memory://diffsynth-ray-test/failing"
    config = FakeGenerator(6, batch_size=2).config
    failing = diffsynth_ray.RayEngine(num_actors=2, make_generator=RayTestGenerator(fake=True, fail=(3,)))
    with pytest.raises(diffsynth_ray.ShardsFailedError, match=r"sample 3 is cursed") as caught:
        generate_from_config(config, output_dir=url, engine=failing, shard_size=2, progress=False)
    assert caught.value.samples == [3] and caught.value.shards == [1]

    fs = fsspec.filesystem("memory")
    root = "/diffsynth-ray-test/failing"
    assert sorted(Path(p).name for p in fs.ls(f"{root}/data", detail=False)) == [
        "train-00000-of-00003.parquet",
        "train-00002-of-00003.parquet",
    ]
    fixed = diffsynth_ray.RayEngine(num_actors=2, make_generator=RayTestGenerator(fake=True))
    stream = generate_from_config(config, output_dir=url, engine=fixed, shard_size=2, progress=False)
    expected = run_sharded(FakeGenerator(6, batch_size=2), tmp_path / "single", shard_size=2)
    assert rows(stream) == rows(expected)
    manifest = json.loads(fs.cat_file(f"{root}/manifest.json"))
    assert manifest["status"] == "complete" and len(manifest["shards"]) == 3
