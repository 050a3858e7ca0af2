"""The closed loop on tiny models: generate -> fine-tune -> evaluate for 2 rounds, interrupted and resumed."""

from __future__ import annotations

import argparse
import json

import pytest
from PIL import Image

from seemadapt.loop import LoopConfig, add_loop_parser, run_loop
from seemadapt.testing import make_contract_dataset


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def eval_data():
    return make_contract_dataset(3, size=(64, 64), classes=("cat", "dog", "background"))


def _config(eval_data, **changes):
    config = {
        "classes": ["cat", "dog"],
        "eval": eval_data,
        "budget": 2,
        "model": "tiny",
        "generate": {"model": "tiny", "num_inference_steps": 2},
        "finetune": {"max_steps": 1, "batch_size": 2, "image_size": 64, "tracker": None, "num_workers": 0},
        "evaluate": {"batch_size": 3, "tasks": ["semantic"]},
    }
    config.update(changes)
    return config


def test_config_errors_name_the_field(eval_data, tmp_path):
    with pytest.raises(ValueError, match=r"LoopConfig\.eval is required"):
        LoopConfig(classes=["cat"], eval=None)
    with pytest.raises(ValueError, match="unknown keys"):
        LoopConfig.from_dict({"classes": ["cat"], "eval": "x", "rounds": 3})
    with pytest.raises(ValueError, match=r"LoopConfig\.generate sets"):
        LoopConfig(classes=["cat"], eval="x", generate={"num_images": 5})
    with pytest.raises(ValueError, match=r"LoopConfig\.plan has unknown keys"):
        LoopConfig(classes=["cat"], eval="x", plan={"budget": 5})
    with pytest.raises(ValueError, match=r"LoopConfig\.evaluate has unknown options"):
        LoopConfig(classes=["cat"], eval="x", evaluate={"size": 5})
    with pytest.raises(ValueError, match="rounds"):
        run_loop(_config(eval_data), 0, tmp_path)


def test_cli_parser_snippet():
    parser = argparse.ArgumentParser(prog="seemadapt")
    add_loop_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["loop", "--config", "loop.yaml", "--rounds", "3", "--output-dir", "out"])
    assert (args.config, args.rounds, args.output_dir, args.no_resume) == ("loop.yaml", 3, "out", False)
    assert callable(args.func)


@pytest.mark.slow
def test_two_rounds_interrupted_and_resumed(eval_data, tmp_path, monkeypatch):
    import importlib

    import diffsynth

    finetune_module = importlib.import_module("seemadapt.finetuning")
    real_finetune = finetune_module.finetune
    real_generate = diffsynth.generate
    calls = {"finetune": 0, "generate": 0}

    def counting_generate(*args, **kwargs):
        calls["generate"] += 1
        return real_generate(*args, **kwargs)

    def failing_in_round_2(*args, **kwargs):
        calls["finetune"] += 1
        if calls["finetune"] == 2:
            raise Interrupted("simulated interruption in round 2")
        return real_finetune(*args, **kwargs)

    monkeypatch.setattr(diffsynth, "generate", counting_generate)
    monkeypatch.setattr(finetune_module, "finetune", failing_in_round_2)
    out = tmp_path / "loop"
    with pytest.raises(Interrupted):
        run_loop(_config(eval_data), 2, out, progress=False)
    assert (out / "round_0" / "DONE").is_file() and (out / "round_1" / "DONE").is_file()
    assert not (out / "round_2" / "DONE").exists()
    assert (out / "round_2" / "dataset").is_dir() and calls["generate"] == 2
    round_1_done = (out / "round_1" / "DONE").read_text()

    # Run again: round 1 is skipped, round 2 reuses its dataset and only trains and evaluates.
    monkeypatch.setattr(finetune_module, "finetune", real_finetune)
    calls.update(generate=0)
    result = run_loop(_config(eval_data), 2, out, progress=False)
    assert calls["generate"] == 0
    assert (out / "round_1" / "DONE").read_text() == round_1_done
    assert [r.round for r in result.rounds] == [0, 1, 2]
    for k in (1, 2):
        folder = out / f"round_{k}"
        assert (folder / "adapters").is_dir() and (folder / "dataset" / "categories.json").is_file()
        metrics = json.loads((folder / "metrics.json").read_text())
        assert set(metrics["iou"]) == {"cat", "dog", "background"}
        for name, value in metrics["iou"].items():
            if value is not None:
                assert result.rounds[k].iou[name] == pytest.approx(value)
    # round k's plan comes from round k-1's IoU; round 2 trained on both rounds' data (accumulate)
    plan_2 = json.loads((out / "round_2" / "plan.json").read_text())
    round_1_iou = json.loads((out / "round_1" / "metrics.json").read_text())["iou"]
    assert plan_2["notes"]["iou"] == {k: round_1_iou[k] for k in ("cat", "dog")}
    assert plan_2["notes"]["from_round"] == 1
    sources = json.loads((out / "round_2" / "metrics.json").read_text())["train_sources"]
    assert [s.split("/")[-2] for s in sources] == ["round_1", "round_2"]
    import datasets

    round_2 = datasets.load_from_disk(str(out / "round_2" / "dataset"))
    assert len(round_2) == 2 and "quality" in round_2.column_names
    with Image.open(result.plot) as plot:
        assert plot.size[0] > 100
    assert "| 2 |" in (out / "summary.md").read_text()

    # The same folder with another configuration is refused, naming the difference.
    with pytest.raises(ValueError, match="budget"):
        run_loop(_config(eval_data, budget=3), 2, out, progress=False)
    with pytest.raises(FileExistsError, match="resume=True"):
        run_loop(_config(eval_data), 2, out, resume=False, progress=False)
