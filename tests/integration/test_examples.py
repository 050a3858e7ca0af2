"""The README's main job and the example configs: the offline quickstart runs end to end, and every thesis
config is accepted by the CLIs' own validation (the real models themselves need a GPU machine with internet)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
THESIS = ROOT / "examples" / "configs" / "thesis"


@pytest.mark.slow
def test_quickstart_main_job_runs_offline(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "examples" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    out = module.main(["--fast", "--output", str(tmp_path / "qs")])

    assert (out / "export" / "panoptic_train.json").is_file() and (out / "preview.png").is_file()
    adapters = json.loads((out / "adapters" / "seemadapt_config.json").read_text())
    assert adapters["classes"][:3] == ["mold", "stain", "pipe"]
    assert (out / "adapters" / "adapter_model.safetensors").is_file()
    results = json.loads((out / "report" / "results.json").read_text())
    before = json.loads((out / "before.json").read_text())
    # The pretrained tiny model learns the new classes: the held-out real scenes score clearly higher, and panoptic
    # inference finds segments (PQ > 0).
    assert results["metrics"]["miou"] > before["miou"] + 0.15, (before, results["metrics"])
    assert results["metrics"]["pq"] > 0.1, results["metrics"]
    printed = capsys.readouterr().out
    assert (
        "before vs after fine-tuning" in printed
        and "segments in the first held-out image: none" not in printed
    )
    assert list((out / "report").glob("overlays/*.png"))


@pytest.mark.slow
def test_real_models_recipe_generates_and_finetunes_on_every_process(tmp_path):
    """examples/real_models.py under a 2-process launcher (CPU, gloo) on the tiny models: both processes draw
    shards, both reach fine-tuning (DDP), the main process saves the adapters."""
    from seemadapt.testing import make_contract_dataset

    for name in ("real_train", "real_eval"):
        make_contract_dataset(4, size=(64, 64)).save_to_disk(tmp_path / name)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(ROOT / "examples" / "real_models.py"), "--classes", "square", "disc"]
    command += ["--real-train", str(tmp_path / "real_train"), "--real-eval", str(tmp_path / "real_eval")]
    command += ["--num-images", "4", "--output", str(out), "--sd-model", "tiny", "--seem-model", "tiny"]
    command += [
        "--dtype",
        "float32",
        "--steps",
        "2",
        "--size",
        "64",
        "--max-steps",
        "2",
        "--image-size",
        "64",
    ]
    command += ["--num-workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=580, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "process 0 of 2: fine-tuned" in output and "process 1 of 2: fine-tuned" in output, output[-4000:]
    manifest = json.loads((out / "synthetic" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["world_size"] == 2
    assert (out / "adapters" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("path", sorted(THESIS.glob("wet_damage_*.yaml")), ids=lambda p: p.name)
def test_thesis_generation_configs_validate(path):
    from diffsynth import GenerationConfig

    config = GenerationConfig(**yaml.safe_load(path.read_text()))
    assert len(config.classes) == 9 and config.num_images in (500, 6000)


@pytest.mark.parametrize("path", sorted(THESIS.glob("table*.yaml")), ids=lambda p: p.name)
def test_thesis_finetune_configs_validate(path, capsys):
    from seemadapt.cli import main

    assert main(["finetune", "--config", str(path), "--dry-run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["strategy"] in {
        "frozen-backbone/adapter-head",
        "adapter-backbone/adapter-head",
        "frozen-backbone/full-head",
        "adapter-backbone/full-head",
    }
