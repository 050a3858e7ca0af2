"""The app's callbacks without a browser: opening, paging, filtering, rejecting, saving, statistics, try-out."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from diffsynth.shards.writer import ShardWriter
from segreview import callbacks
from segreview.callbacks import AppState
from segreview.cli import build_parser, roots_for
from segreview.paths import Roots
from segreview.review import ReviewSession
from segreview.source import is_hub_id
from segreview.tryout import CLICK_MODES, TryOut, mark_points, parse_classes


@pytest.fixture
def folder(tmp_path, review_dataset):
    review_dataset(4, size=(64, 64)).save_to_disk(str(tmp_path / "ds"))
    return tmp_path


@pytest.fixture
def state(folder):
    app = AppState(Roots.of([folder]))
    callbacks.open_source(app, str(folder / "ds"))
    return app


def test_roots_confine_paths(tmp_path):
    roots = Roots.of([tmp_path / "a"])
    (tmp_path / "a").mkdir()
    assert roots.resolve("x") == (tmp_path / "a" / "x").resolve()
    assert roots.resolve(tmp_path / "a" / "y") == (tmp_path / "a" / "y").resolve()
    for outside in (tmp_path / "b", tmp_path / "a" / ".." / "b", "../b", "/etc/passwd"):
        with pytest.raises(PermissionError, match="outside the folders"):
            roots.resolve(outside)


def test_symlink_out_of_a_root_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "link").symlink_to(tmp_path)
    with pytest.raises(PermissionError):
        Roots.of([tmp_path / "a"]).resolve("link")


def test_open_shows_first_sample_with_overlays_legend_attention(folder):
    app = AppState(Roots.of([folder]))
    (status, image, panoptic, semantic, legend, attention, details), names, frame, out = (
        callbacks.open_source(app, str(folder / "ds"))
    )
    assert status.startswith("Sample 1 of 4")
    assert image.shape == panoptic.shape == semantic.shape == (64, 64, 3)
    assert not np.array_equal(image, panoptic) and not np.array_equal(image, semantic)
    assert names == ["square", "disc", "background"]
    assert "ignore / void" in legend and "background (stuff)" in legend
    assert [caption for _, caption in attention] == ["square", "disc"]
    assert attention[0][0].shape == (64, 64, 3)
    assert "**Prompt:** a photo of" in details and "**Grounding:**" in details and "overall" in details
    assert out == str(folder / "ds") + "-reviewed"
    assert list(frame.columns) == ["class", "pixels", "instances", "images", "ignore share"]


def test_open_outside_the_roots_is_refused(folder, tmp_path_factory):
    app = AppState(Roots.of([folder / "ds"]))
    with pytest.raises(PermissionError):
        callbacks.open_source(app, str(tmp_path_factory.mktemp("elsewhere")))


def test_paging_is_clamped(state):
    assert callbacks.step(state, -1)[0].startswith("Sample 1 of 4")
    assert callbacks.step(state, 10)[0].startswith("Sample 4 of 4")
    assert callbacks.step(state, -1)[0].startswith("Sample 3 of 4")


def test_filter_by_class_and_sort_by_quality(state):
    session = state.session()
    callbacks.arrange(state, "square", None, "quality, worst first")
    square = session.categories[0].id
    assert session.order and all(square in session.classes[i] for i in session.order)
    scores = [session.overall(i) for i in session.order]
    assert scores == sorted(scores)
    callbacks.arrange(state, "", None, "quality, best first")
    everything = [session.overall(i) for i in session.order]
    assert len(everything) == 4 and everything == sorted(everything, reverse=True)
    best = session.overall(session.order[0])
    assert callbacks.arrange(state, "", best, "index")[0].startswith("Sample 1 of 1")
    with pytest.raises(ValueError, match="no class 'cat'"):
        callbacks.arrange(state, "cat", None, "index")
    with pytest.raises(ValueError, match="sort must be"):
        session.arrange(sort="random")


def test_nothing_matching_shows_a_message(state):
    status, image, *_ = callbacks.arrange(state, "", 1.0, "index")
    assert status.startswith("No sample matches") and image is None
    callbacks.reject(state)  # nothing to reject: no error
    assert not state.session().rejected


def test_reject_and_save_writes_the_kept_subset_and_leaves_the_original(state, folder):
    callbacks.step(state, 1)
    assert callbacks.reject(state)[0].endswith("1 rejected · REJECTED")
    callbacks.step(state, 1)
    assert "2 rejected · REJECTED" in callbacks.reject(state)[0]
    assert callbacks.reject(state)[0].endswith("· 1 rejected")  # taken back
    message = callbacks.save(state, str(folder / "kept"))
    assert message.startswith("Saved 3 samples")
    kept = datasets.load_from_disk(str(folder / "kept"))
    assert kept["image_id"] == [0, 2, 3]
    assert "attention" in kept.column_names
    assert len(datasets.load_from_disk(str(folder / "ds"))) == 4
    card = (folder / "kept" / "README.md").read_text()
    assert "| 1 | 1 | 000001.png |" in card and "Kept 3 of the 4 samples" in card
    record = json.loads((folder / "kept" / "review.json").read_text())
    assert record["rejected"] == [{"row": 1, "image_id": 1, "file_name": "000001.png"}]


def test_save_refuses_the_source_a_full_folder_and_outside_paths(state, folder, tmp_path_factory):
    with pytest.raises(ValueError, match="inside the dataset"):
        callbacks.save(state, str(folder / "ds" / "sub"))
    (folder / "full").mkdir()
    (folder / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        callbacks.save(state, str(folder / "full"))
    with pytest.raises(PermissionError):
        callbacks.save(state, str(tmp_path_factory.mktemp("elsewhere") / "kept"))


def test_statistics_count_pixels_instances_and_ignore(state):
    session = state.session()
    frame = callbacks.statistics_frame(state)
    rows = session.dataset.with_format("arrow")["segments_info"].to_pylist()
    assert frame["pixels"].sum() == sum(s["area"] for segs in rows for s in segs)
    assert frame["instances"].sum() == sum(len(segs) for segs in rows)
    assert frame.set_index("class").loc["background", "images"] == 4
    assert ((frame["ignore share"] > 0) & (frame["ignore share"] < 0.5)).all()
    session.rejected.add(0)
    kept = callbacks.statistics_frame(state, kept_only=True)
    assert kept["pixels"].sum() < frame["pixels"].sum()
    assert callbacks.statistics_frame(AppState(Roots.of(["."]))).empty


def test_callbacks_before_opening_say_what_to_do():
    app = AppState(Roots.of(["."]))
    assert callbacks.sample_outputs(app)[0] == "Open a dataset."
    with pytest.raises(ValueError, match="Open a dataset first"):
        callbacks.step(app, 1)


def _record(start: int, stop: int) -> dict:
    return {"fingerprint": "run", "start": start, "stop": stop}


def test_parquet_folder_and_a_shard_folder_being_written(tmp_path, review_dataset):
    ds = review_dataset(4, size=(32, 32))
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    assert len(ReviewSession.open(str(tmp_path / "pq")).dataset) == 4
    running = tmp_path / "run"
    (running / "data").mkdir(parents=True)
    (running / "manifest.json").write_text(
        json.dumps({"format": 1, "num_images": 8, "shard_size": 4, "fingerprint": "run"})
    )
    rows = ds.with_format("arrow")[:].to_pylist()
    finished = ShardWriter(running / "data" / "train-00000-of-00002.parquet", ds.features, _record(0, 4))
    for row in rows:
        finished.add(row)
    finished.commit()
    in_progress = ShardWriter(running / "data" / "train-00001-of-00002.parquet", ds.features, _record(4, 8))
    in_progress.add(rows[0])
    session = ReviewSession.open(str(running), Roots.of([tmp_path]))
    in_progress.abort()
    assert len(session.dataset) == 4


def test_cli_roots_and_localhost_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "ds").mkdir(parents=True)
    args = build_parser().parse_args(["data/ds"])
    assert args.host == "127.0.0.1"
    roots = roots_for(args.dataset, args.root)
    assert roots.folders == (tmp_path.resolve(), (tmp_path / "data").resolve())
    assert roots_for("owner/name", []).folders == (tmp_path.resolve(),)
    assert roots_for("x", [str(tmp_path / "only")]).folders == ((tmp_path / "only").resolve(),)


def test_parse_classes_and_points():
    assert parse_classes("cat, dog\nbird,,") == ["cat", "dog", "bird"]
    marked = mark_points(np.zeros((20, 20, 3), np.uint8), [(5, 5, 1), (15, 15, 0)], radius=1)
    assert tuple(marked[5, 5]) == (40, 220, 60) and tuple(marked[15, 15]) == (230, 40, 40)


@pytest.fixture(scope="module")
def tiny_state():
    app = AppState(Roots.of([Path.cwd()]))
    assert callbacks.load_model(app, "tiny", "").startswith("Loaded SEEM tiny")
    return app


@pytest.fixture
def picture(review_dataset):
    return np.asarray(review_dataset(1, size=(64, 64))[0]["image"])


def test_tryout_needs_a_model_an_image_and_a_prompt(picture):
    app = AppState(Roots.of(["."]))
    with pytest.raises(RuntimeError, match="Load a model first"):
        callbacks.run_model(app, picture, "semantic", "square")
    with pytest.raises(ValueError, match="Upload an image"):
        callbacks.run_model(app, None, "semantic", "square")
    with pytest.raises(ValueError, match="Click a point"):
        TryOut().visual(picture)


def test_tryout_tasks_on_tiny(tiny_state, picture):
    overlay, frame, summary = callbacks.run_model(tiny_state, picture, "semantic", "square, disc")
    assert overlay.shape == picture.shape and list(frame["label"]) == ["square", "disc"]
    assert frame["pixels"].sum() == 64 * 64
    _, frame, summary = callbacks.run_model(tiny_state, picture, "panoptic", "square, disc", "square")
    assert summary.startswith("panoptic:")
    _, frame, _ = callbacks.run_model(tiny_state, picture, "grounding", sentence="the square")
    assert list(frame["label"]) == ["the square"]
    with pytest.raises(ValueError, match="Type the class names"):
        callbacks.run_model(tiny_state, picture, "semantic", " , ")
    with pytest.raises(ValueError, match="four numbers"):
        callbacks.run_model(tiny_state, picture, "visual prompt", box="1, 2")


def test_click_gives_a_mask_at_once_in_the_visual_task(tiny_state, picture):
    tiny_state.tryout.clear()
    assert callbacks.click(tiny_state, picture, 20, 30, CLICK_MODES[0], "semantic") is None
    overlay, frame, summary = callbacks.click(tiny_state, picture, 40, 40, CLICK_MODES[0], "visual prompt")
    assert summary.startswith("visual prompt: 1 of 1 masks non-empty")
    assert frame["pixels"].iloc[0] > 0
    assert tuple(overlay[30, 20]) == (40, 220, 60)  # the clicked point is drawn
    _, frame, _ = callbacks.run_model(tiny_state, picture, "visual prompt", box="0, 0, 32, 32")
    assert list(frame["label"]) == ["clicked object", "box"]
    tiny_state.tryout.clear()


def test_two_box_corners_make_a_box_prompt(tiny_state, picture):
    tiny_state.tryout.clear()
    assert callbacks.click(tiny_state, picture, 40, 50, "box corner", "visual prompt") is None  # one corner
    overlay, frame, _ = callbacks.click(tiny_state, picture, 10, 5, "box corner", "visual prompt")
    assert tiny_state.tryout.box == [10, 5, 40, 50]
    assert list(frame["label"]) == ["box"]
    assert tuple(overlay[5, 20]) == (255, 220, 0)  # the box is outlined
    tiny_state.tryout.click(1, 1, "box corner")  # a third corner starts a new box
    assert (
        tiny_state.tryout.box is None and tiny_state.tryout.describe_prompts() == "0 point(s), one box corner"
    )
    with pytest.raises(ValueError, match="click mode"):
        tiny_state.tryout.click(1, 1, "lasso")
    tiny_state.tryout.clear()


def test_hub_ids_go_to_datasets(monkeypatch, tmp_path, review_dataset):
    calls = []

    def fake_load(name, split, revision):
        calls.append((name, split, revision))
        return review_dataset(2, size=(32, 32))

    monkeypatch.setattr("segreview.source.datasets.load_dataset", fake_load)
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("owner/name") and is_hub_id("owner/name@v1")
    assert not is_hub_id("./owner/name") and not is_hub_id("/abs/path") and not is_hub_id("a/b/c")
    session = ReviewSession.open("owner/name@v1", Roots.of([tmp_path]))
    assert len(session.dataset) == 2 and calls == [("owner/name", "train", "v1")]
    assert callbacks.default_output("owner/name@v1") == "owner--name-reviewed"
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a Hub id"):
        ReviewSession.open("a/b/c", Roots.of([tmp_path]))
