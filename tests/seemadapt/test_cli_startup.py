"""The command lines answer ``--help`` and validate a config (``--dry-run``) without importing the heavy libraries.

Each check runs in a fresh interpreter and reads ``sys.modules`` afterwards (no timing: the machine may be busy).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "detectron2", "transformers", "diffusers", "datasets", "accelerate")

PROBE = """
import json, sys
from {module} import main
try:
    code = main({argv!r})
except SystemExit as exit:
    code = exit.code
print(json.dumps({{"code": code, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def run_cli(module: str, argv: list[str], cwd) -> dict:
    script = PROBE.format(module=module, argv=argv, heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("seemadapt.cli", ["--help"]),
        ("seemadapt.cli", ["finetune", "--help"]),
        ("seemadapt.cli", ["evaluate", "--help"]),
        ("seemadapt.cli", ["predict", "--help"]),
        ("diffsynth.cli", ["--help"]),
        ("diffsynth.cli", ["generate", "--help"]),
    ],
)
def test_help_imports_no_heavy_library(module, argv, tmp_path):
    result = run_cli(module, argv, tmp_path)
    assert result == {"code": 0, "heavy": []}


def test_finetune_dry_run_validates_without_torch(tmp_path):
    config = tmp_path / "ft.yaml"
    config.write_text(
        "model: tiny\nstrategy: adapter-backbone/full-head\ndata:\n  train: data/\ntrain:\n  max_steps: 3\n"
    )
    argv = ["finetune", "--config", str(config), "--dry-run", "--batch-size", "2"]
    assert run_cli("seemadapt.cli", argv, tmp_path) == {"code": 0, "heavy": []}
    typo = ["finetune", "--config", str(config), "--dry-run", "--set", "train.max_step=3"]
    assert run_cli("seemadapt.cli", typo, tmp_path) == {"code": 2, "heavy": []}
    bad_strategy = ["finetune", "--config", str(config), "--dry-run", "--strategy", "adapter-everywhere"]
    assert run_cli("seemadapt.cli", bad_strategy, tmp_path) == {"code": 2, "heavy": []}
