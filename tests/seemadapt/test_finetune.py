"""``finetune()``: model and strategy forms, class alignment, periodic evaluation, best adapters, reports, trackers."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from seemadapt.adapters import AdapterPlacement, adapter_report, apply_adapters, get_strategy
from seemadapt.finetuning import finetune, load_model
from seemadapt.model import SEEM
from seemadapt.testing import make_contract_dataset
from seemadapt.train import Run

FAST = dict(
    batch_size=2,
    image_size=64,
    num_workers=0,
    progress=False,
    min_scale=1.0,
    max_scale=1.0,
    flip=False,
    criterion={"num_points": 1024},
    lr=1e-3,
    log_every=1,
    eval_batch_size=2,
)


@pytest.fixture(scope="module")
def data():
    return make_contract_dataset(2, size=(64, 64))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("seemadapt-cache"))


# ---------------------------------------------------------------------- model forms


def test_load_model_forms(tmp_path, monkeypatch):
    tiny = load_model("tiny")
    assert isinstance(tiny, SEEM) and tiny.config.name == "tiny"
    assert load_model(tiny) is tiny
    folder = tiny.save_pretrained(tmp_path / "base")
    loaded = load_model(folder)
    for key, value in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    with pytest.raises(TypeError, match="preset name"):
        load_model(3)
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing.pt"))
    built = []
    monkeypatch.setattr(SEEM, "from_config", classmethod(lambda cls, name: built.append(name) or "model"))
    with pytest.warns(UserWarning, match="random weights"):
        assert load_model("focalt") == "model"
    assert built == ["focalt"]


def test_bad_overrides_fail_before_anything_runs(data, tmp_path):
    with pytest.raises(ValueError, match="unknown fields"):
        finetune(data, model="tiny", lrr=1.0, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"TrainConfig\.batch_size"):
        finetune(data, model="tiny", batch_size=0, output_dir=str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_strategy_forms_and_an_existing_placement(data, cache, tmp_path, capsys):
    placement = get_strategy("frozen-backbone/adapter-head")
    model = SEEM.from_config("tiny")
    apply_adapters(model, placement)
    run = finetune(
        data,
        model=model,
        strategy=None,
        max_steps=1,
        tracker=None,
        output_dir=str(tmp_path / "keep"),
        cache_dir=cache,
        **FAST,
    )
    assert run.placement == placement and run.model is model
    assert "decoder adapters" in capsys.readouterr().out  # the trainable-parameter table
    with pytest.raises(ValueError, match="different adapter placement"):
        finetune(data, model=model, strategy="adapter-backbone/full-head", max_steps=1, tracker=None, **FAST)
    as_dict = finetune(
        data,
        model="tiny",
        strategy=placement.to_dict(),
        max_steps=1,
        tracker=None,
        output_dir=str(tmp_path / "dict"),
        cache_dir=cache,
        **FAST,
    )
    assert as_dict.placement == placement
    assert adapter_report(as_dict.model).num_trainable == adapter_report(model).num_trainable


def test_classes_reorder_the_data_consistently(data, cache, tmp_path):
    order = ["background", "disc", "square"]
    run = finetune(
        data,
        model="tiny",
        classes=order,
        max_steps=2,
        tracker=None,
        output_dir=str(tmp_path / "run"),
        cache_dir=cache,
        **FAST,
    )
    assert run.classes == order
    from seemadapt.detectron2_compat import MetadataCatalog

    assert list(MetadataCatalog.get("seemadapt_train").stuff_classes) == order
    with pytest.raises(Exception, match="disc"):
        finetune(
            data,
            model="tiny",
            classes=["background", "square"],
            max_steps=1,
            tracker=None,
            cache_dir=cache,
            **FAST,
        )


# ---------------------------------------------------------------------- the full job


def test_finetune_with_eval_keeps_the_best_adapters_and_writes_the_report(data, cache, tmp_path, capsys):
    pytest.importorskip("seemadapt.evaluation")
    out = tmp_path / "run"
    run = finetune(
        data,
        eval=data,
        model="tiny",
        strategy="adapter-backbone/full-head",
        max_steps=4,
        eval_every=2,
        save_every=2,
        tracker="tensorboard",
        output_dir=str(out),
        cache_dir=cache,
        **FAST,
    )
    printed = capsys.readouterr().out
    assert "backbone adapters" in printed and "trainable" in printed
    assert isinstance(run, Run)
    assert 0.0 <= run.metrics["miou"] <= 1.0 and "pq" in run.metrics
    assert [e["step"] for e in run.eval_history] == [2, 4]
    assert run.best_step in (2, 4)
    assert run.best_score == max(e["miou"] for e in run.eval_history)
    assert (run.best_dir / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    report = run.report_dir
    for name in ("results.md", "metrics.json", "history.json", "loss_curve.png", "per_class.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    saved = json.loads((report / "metrics.json").read_text())
    assert saved["best"]["step"] == run.best_step
    assert "miou" in saved["final"]
    assert "Semantic" in (report / "results.md").read_text() or "miou" in (report / "results.md").read_text()
    assert list((out / "logs").rglob("events.out.tfevents*")), "TensorBoard event files"
    history = json.loads((report / "history.json").read_text())
    assert [h["step"] for h in history["train"] if "loss" in h] == [1, 2, 3, 4]
    assert all(math.isfinite(h["loss"]) for h in history["train"] if "loss" in h)
    assert run.table().strip()


def test_finetune_without_eval(data, cache, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=UserWarning)  # "tiny" is not a random-weights surprise
        run = finetune(
            [data, data],  # a list of sources is mixed
            model="tiny",
            max_steps=2,
            tracker=None,
            output_dir=str(tmp_path / "run"),
            cache_dir=cache,
            **FAST,
        )
    assert run.metrics == {} and run.best_step is None and run.best_dir is None
    assert (run.report_dir / "loss_curve.png").is_file()
    assert not (run.report_dir / "per_class.png").exists()
    assert run.table() == "(no evaluation data)"
    folder = run.save(tmp_path / "adapters")
    assert (folder / "adapter_model.safetensors").is_file()


def test_push_to_hub_saves_then_uploads(data, cache, tmp_path, monkeypatch):
    pytest.importorskip("seemadapt.hub")
    import seemadapt.hub as hub

    run = finetune(
        data,
        model="tiny",
        strategy=AdapterPlacement(head_adapters=True),
        max_steps=1,
        tracker=None,
        output_dir=str(tmp_path / "run"),
        cache_dir=cache,
        **FAST,
    )
    seen = {}

    def fake_push(folder, repo_id, *, private, token):
        seen.update(
            files=sorted(p.name for p in folder.iterdir()), repo=repo_id, private=private, token=token
        )
        return "https://huggingface.co/me/x/commit/1"

    monkeypatch.setattr(hub, "push_adapters", fake_push)
    assert run.push_to_hub("me/x", private=True, token="hf_secret") == "https://huggingface.co/me/x/commit/1"
    assert seen["repo"] == "me/x" and seen["private"] is True and seen["token"] == "hf_secret"
    assert "adapter_model.safetensors" in seen["files"]
