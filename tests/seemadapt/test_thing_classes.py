"""Thing/stuff classes travel with fine-tuned adapters: the run, the saved config, the model card and ``predict``."""

from __future__ import annotations

import json

import yaml

from seemadapt.cli import main
from seemadapt.finetuning import finetune
from seemadapt.testing import make_contract_dataset


def test_saved_adapters_know_their_things_and_predict_uses_them(tmp_path):
    data = make_contract_dataset(2, size=(64, 64))  # square and disc are things, background is stuff
    run = finetune(
        data,
        eval=data,
        model="tiny",
        max_steps=1,
        batch_size=2,
        image_size=64,
        num_workers=0,
        progress=False,
        tracker=None,
        eval_tasks=("semantic",),
        output_dir=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache"),
    )
    assert run.thing_classes == ["square", "disc"]
    folder = run.save(tmp_path / "adapters")
    for saved in (folder, run.best_dir):
        config = json.loads((saved / "seemadapt_config.json").read_text())
        assert config["thing_classes"] == ["square", "disc"], saved
    assert "things: square, disc" in (folder / "README.md").read_text()

    data[0]["image"].convert("RGB").save(tmp_path / "img.png")
    out = tmp_path / "pred"
    argv = [
        "predict",
        "--adapters",
        str(folder),
        "--task",
        "panoptic",
        str(tmp_path / "img.png"),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert yaml.safe_load((out / "predict_config.yaml").read_text())["thing_classes"] == ["square", "disc"]
    segments = json.loads((out / "img_panoptic.json").read_text())
    assert all(s["isthing"] == (s["name"] != "background") for s in segments)
