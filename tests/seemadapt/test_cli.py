"""The ``seemadapt`` command line on the tiny model, and the lazy package namespace."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from seemadapt.cli import main
from seemadapt.testing import make_contract_dataset

CLASSES = ["square", "disc", "background"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    ds = make_contract_dataset(2, size=(32, 32), seed=7)
    ds.save_to_disk(str(path / "ds"))
    for i, row in enumerate(ds.with_format(None)):
        row["image"].save(path / f"img{i}.png")
    return path


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    from seemadapt.adapters import adapter_state_dict, apply_adapters
    from seemadapt.hub import save_adapters
    from seemadapt.model import SEEM

    model = SEEM.from_config("tiny")
    apply_adapters(model, "frozen-backbone/adapter-head")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for value in adapter_state_dict(model).values():
            value.add_(torch.randn(value.shape, generator=generator) * 0.05)
    folder = tmp_path_factory.mktemp("adapters")
    save_adapters(model, folder, base_model="tiny", classes=CLASSES, thing_classes=["square", "disc"])
    return folder


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------------------------ package namespace


def test_import_is_light_and_names_resolve():
    code = (
        "import sys, seemadapt; heavy = [m for m in ('torch', 'datasets', 'detectron2') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    import importlib

    import seemadapt

    assert type(seemadapt) is types.ModuleType  # a plain module, no class swap
    importlib.import_module("seemadapt.evaluation")  # binding the submodule must not shadow the function
    importlib.import_module("seemadapt.finetuning")
    assert callable(seemadapt.evaluate) and seemadapt.evaluate.__name__ == "evaluate"
    assert callable(seemadapt.finetune) and seemadapt.finetune.__name__ == "finetune"
    for name in seemadapt.__all__:
        assert getattr(seemadapt, name) is not None, name
    assert seemadapt.load.__name__ == "load_source"
    with pytest.raises(AttributeError):
        _ = seemadapt.no_such_name


# ------------------------------------------------------------------------------------------------ summary, convert


def test_summary_of_a_preset_with_a_strategy(capsys):
    assert main(["summary", "--model", "focall", "--strategy", "adapter-backbone/full-head"]) == 0
    out = capsys.readouterr().out
    assert "SEEM v1 (focall)" in out and "backbone adapters" in out and "trainable" in out
    assert main(["summary", "--model", "tiny"]) == 0
    assert "SEEM v1 (tiny)" in capsys.readouterr().out


def test_convert_writes_a_folder_that_loads(tmp_path, capsys):
    from seemadapt.model import SEEM

    reference = SEEM.from_config("tiny").state_dict()
    torch.save(reference, tmp_path / "tiny.pt")
    assert main(["convert", str(tmp_path / "tiny.pt"), str(tmp_path / "out"), "--config", "tiny"]) == 0
    loaded = SEEM.from_pretrained(tmp_path / "out").state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "x")]) == 2
    assert "missing.pt" in _error_line(capsys)


# ------------------------------------------------------------------------------------------------ predict, evaluate


def test_predict_writes_overlays_and_maps(data_dir, tmp_path):
    out = tmp_path / "preds"
    args = ["predict", "--model", "tiny", "--classes", *CLASSES, "--task", "semantic", "--out", str(out)]
    assert main([*args, str(data_dir / "img0.png"), str(data_dir / "img1.png")]) == 0
    labels = np.asarray(Image.open(out / "img0_semantic_labels.png"))
    assert labels.shape == (32, 32) and labels.max() < len(CLASSES)
    assert Image.open(out / "img1_semantic.png").width > 32  # overlay + legend panel
    assert yaml.safe_load((out / "predict_config.yaml").read_text())["classes"] == CLASSES


def test_predict_takes_classes_from_the_adapters(adapters, data_dir, tmp_path):
    out = tmp_path / "pan"
    argv = [
        "predict",
        "--adapters",
        str(adapters),
        "--task",
        "panoptic",
        str(data_dir / "img0.png"),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    info = json.loads((out / "img0_panoptic.json").read_text())
    assert all(s["name"] in CLASSES for s in info)
    ids = np.asarray(Image.open(out / "img0_panoptic_ids.png").convert("RGB")).astype(np.int64)
    assert set(np.unique(ids[..., 0] + 256 * ids[..., 1]).tolist()) - {0} == {s["id"] for s in info}
    assert yaml.safe_load((out / "predict_config.yaml").read_text())["thing_classes"] == ["square", "disc"]


def test_evaluate_with_adapters_matches_the_python_api(adapters, data_dir, tmp_path, capsys):
    from seemadapt.evaluation import evaluate
    from seemadapt.hub import load_model

    out = tmp_path / "eval"
    argv = ["evaluate", "--adapters", str(adapters), "--data", str(data_dir / "ds"), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    assert "mIoU" in capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())["metrics"]
    expected = evaluate(load_model(adapters=adapters), str(data_dir / "ds"), progress=False).metrics
    assert saved["miou"] == pytest.approx(expected["miou"])
    assert (saved["pq"] is None and np.isnan(expected["pq"])) or saved["pq"] == pytest.approx(expected["pq"])
    resolved = yaml.safe_load((out / "evaluate_config.yaml").read_text())
    assert resolved["adapters"] == str(adapters) and resolved["tasks"] == ["semantic", "panoptic"]
    assert (out / "per_class_semantic.png").is_file()


def test_evaluate_instance_task(data_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", "tiny", "--data", str(data_dir / "ds"), "--tasks", "instance", "semantic"]
    assert main([*argv, "--max-images", "2", "--no-progress", "--out", str(out)]) == 0
    assert "AP50" in capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    assert {"ap", "ap50", "ap75", "miou"} <= set(saved["metrics"]) and "pq" not in saved["metrics"]
    assert set(saved["instance"]["per_class"]) == {"square", "disc"}  # the dataset's thing classes
    assert yaml.safe_load((out / "evaluate_config.yaml").read_text())["tasks"] == ["instance", "semantic"]
    with pytest.raises(SystemExit) as exit_info:  # argparse's own choice check
        main(["evaluate", "--model", "tiny", "--data", str(data_dir / "ds"), "--tasks", "depth"])
    assert exit_info.value.code == 2


def test_user_errors_print_one_line_and_exit_2(data_dir, tmp_path, capsys):
    assert main(["evaluate", "--model", "tiny", "--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in _error_line(capsys)
    assert main(["evaluate", "--data", str(data_dir / "ds")]) == 2
    assert _error_line(capsys).startswith("seemadapt evaluate: error: --model")
    assert main(["predict", "--model", "tiny", str(data_dir / "img0.png"), "--out", str(tmp_path)]) == 2
    assert "--classes" in _error_line(capsys)
    assert main(["evaluate", "--model", "tiny", "--data", str(data_dir / "ds"), "--classes", "lamp"]) == 2
    assert "lamp" in _error_line(capsys)


# ------------------------------------------------------------------------------------------------ finetune config


def test_finetune_config_precedence_file_then_set_then_flags(tmp_path, capsys):
    config = tmp_path / "ft.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": "tiny",
                "strategy": "frozen-backbone/full-head",
                "data": {"train": "train_dir", "eval": "val_dir"},
                "train": {"lr": 0.001, "max_steps": 5, "output_dir": str(tmp_path / "run")},
            }
        )
    )
    argv = ["finetune", "--config", str(config), "--set", "train.max_steps=7", "--set", "train.batch_size=3"]
    assert main([*argv, "--max-steps", "9", "--no-flip", "--train", "a", "b", "--dry-run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["train"]["lr"] == 0.001
    assert resolved["train"]["max_steps"] == 9  # flag beats --set beats file
    assert resolved["train"]["batch_size"] == 3
    assert resolved["train"]["flip"] is False
    assert resolved["data"] == {"train": ["a", "b"], "eval": "val_dir"}
    assert resolved["strategy"] == "frozen-backbone/full-head"
    assert not (tmp_path / "run").exists()  # dry run writes nothing


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--set", "optimizer.lr=1"], "unknown section(s) ['optimizer']"),
        (["--set", "train.lr=-1"], "TrainConfig.lr"),
        (["--set", "train.learning_rate=1"], "learning_rate"),
        (["--set", "train.lr"], "expected key=value"),
        (["--strategy", "best-one"], "best-one"),
    ],
)
def test_finetune_config_errors_name_the_field(argv, fragment, capsys):
    assert main(["finetune", "--model", "tiny", "--train", "somewhere", *argv, "--dry-run"]) == 2
    assert fragment in _error_line(capsys)


def test_finetune_needs_training_data(capsys):
    assert main(["finetune", "--model", "tiny", "--dry-run"]) == 2
    assert "data.train" in _error_line(capsys)


def test_finetune_two_steps_then_push(data_dir, tmp_path, monkeypatch, capsys):
    from seemadapt import hub

    pushed = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def whoami(self):
            return {"name": "me", "orgs": [], "auth": {"accessToken": {"role": "write"}}}

        def create_repo(self, repo_id, **kwargs):
            pushed.append(("create", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            files = sorted(p.name for p in __import__("pathlib").Path(kwargs["folder_path"]).iterdir())
            pushed.append(("upload", kwargs["repo_id"], files))
            return "https://huggingface.co/me/shapes/commit/1"

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub.hub_constants, "HF_HUB_OFFLINE", False)  # the push check asks the (fake) Hub
    out = tmp_path / "run"
    argv = [
        "finetune",
        "--model", "tiny",
        "--strategy", "frozen-backbone/adapter-head",
        "--train", str(data_dir / "ds"),
        "--eval", str(data_dir / "ds"),
        "--max-steps", "2",
        "--batch-size", "1",
        "--image-size", "64",
        "--num-workers", "0",
        "--tracker", "none",
        "--no-progress",
        "--cache-dir", str(tmp_path / "cache"),
        "--output-dir", str(out),
        "--push-to-hub", "me/shapes",
        "--private",
    ]  # fmt: skip
    assert main(argv) == 0
    resolved = yaml.safe_load((out / "finetune_config.yaml").read_text())
    assert resolved["train"]["max_steps"] == 2 and resolved["push_to_hub"] == "me/shapes"
    assert [p[0] for p in pushed] == ["create", "upload"]
    assert pushed[0][2]["private"] is True
    assert {"adapter_model.safetensors", "seemadapt_config.json", "README.md"} <= set(pushed[1][2])
    assert "pushed to" in capsys.readouterr().out
