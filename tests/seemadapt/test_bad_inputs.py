"""Bad inputs and faults a new user meets, one row each: the SDK's own exception type (a ValueError / OSError
subclass), a message that names the field, and nothing left behind. Plus the faults a resume must refuse (a
changed or unsafe checkpoint file), a second run with another precision, and detectron2's tools after
``import seemadapt``."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from accelerate import Accelerator
from fake_hub import fine_grained, whoami  # loaded by tests/conftest.py
from unwritable import call_where_unwritable, read_only_folder

import seemadapt
from seemadapt import hub
from seemadapt.cli import main
from seemadapt.errors import (
    ArgumentError,
    CheckpointError,
    HubAccessError,
    OutputPathError,
    ResumeError,
)
from seemadapt.hub import check_push_access
from seemadapt.model import SEEM
from seemadapt.testing import make_contract_dataset
from seemadapt.train import TrainConfig, Trainer
from seemadapt.train.accelerator_state import release_precision
from seemadapt.train.checkpoints import STATE_FILE, TrainState, find_checkpoint, save_checkpoint


class Evil:
    """Unpickling this would run code: the safe loader must refuse it, never call it."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def _file(tmp_path: Path, name: str = "a-file", text: str = "not a checkpoint, just text\n") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _tiny_state(**changes) -> dict[str, torch.Tensor]:
    state = dict(SEEM.from_config("tiny").state_dict())
    state.update(changes)
    return state


def _foreign_checkpoint(tmp_path):
    torch.save({"other.weight": torch.zeros(3, 3), "other.bias": torch.zeros(3)}, tmp_path / "other.pt")
    SEEM.from_pretrained(tmp_path / "other.pt", config="tiny")


def _mismatched_checkpoint(tmp_path):
    bad = _tiny_state(**{"sem_seg_head.predictor.query_feat.weight": torch.zeros(9, 64)})
    torch.save(bad, tmp_path / "bad.pt")
    SEEM.from_pretrained(tmp_path / "bad.pt", config="tiny")


def _finetune(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"), max_steps=1, tracker=None, progress=False, num_workers=0
    )
    settings.update(overrides)
    seemadapt.finetune(make_contract_dataset(1, size=(32, 32)), model="tiny", **settings)


def _save_fails(tmp_path):
    class DiskFull:
        is_main_process = True

        def wait_for_everyone(self):
            pass

        def save_state(self, folder):
            Path(folder).mkdir(parents=True)
            (Path(folder) / "optimizer.bin").write_bytes(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    save_checkpoint(DiskFull(), tmp_path / "out", TrainState(step=1), 2)


def _push_without_network(tmp_path):
    model = SEEM.from_config("tiny")
    seemadapt.apply_adapters(model, "frozen-backbone/adapter-head")
    folder = seemadapt.save_adapters(model, tmp_path / "adapters", base_model="tiny", classes=["cat", "dog"])

    class NoNetwork:
        def __init__(self, token=None):
            pass

        def create_repo(self, *args, **kwargs):
            raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub, "HfApi", NoNetwork)
        seemadapt.push_adapters(folder, "me/adapters")


FINETUNE_INTO_FOLDER = """
import seemadapt
from seemadapt.testing import make_contract_dataset
seemadapt.finetune(
    make_contract_dataset(1, size=(32, 32)), model="tiny", output_dir=str(folder / "out"), max_steps=1,
    tracker=None, progress=False, num_workers=0,
)
"""


def _read_only(tmp_path):
    """An output folder this user cannot write, for real (tests/unwritable.py: also when the tests run as root)."""
    with read_only_folder(tmp_path) as folder:
        call_where_unwritable(FINETUNE_INTO_FOLDER, folder)


def _check_push_with(grants, repo_id="me/adapters"):
    """check_push_access against a Hub whose whoami shows a fine-grained token with ``grants``."""

    class FineGrainedApi:
        def __init__(self, token=None):
            pass

        def whoami(self):
            return whoami(role="fineGrained", grants=grants)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub, "HfApi", FineGrainedApi)
        patch.setattr(hub.hub_constants, "HF_HUB_OFFLINE", False)
        check_push_access(repo_id)


# (case id, call(tmp_path), exception type, text the message must hold)
CASES = [
    ("checkpoint-no-key-matches", _foreign_checkpoint, CheckpointError, "missing from the checkpoint"),
    ("checkpoint-shapes-differ", _mismatched_checkpoint, CheckpointError, "shape mismatch"),
    (
        "text-file-as-pt",
        lambda t: SEEM.from_pretrained(_file(t, "model.pt"), config="tiny"),
        CheckpointError,
        "is not a PyTorch checkpoint",
    ),
    (
        "damaged-safetensors",
        lambda t: SEEM.from_pretrained(_file(t, "model.safetensors"), config="tiny"),
        CheckpointError,
        "not a readable safetensors file",
    ),
    ("unknown-eval-task", lambda t: TrainConfig(eval_tasks=["foo"]), ValueError, "TrainConfig.eval_tasks"),
    pytest.param(
        "fp16-on-cpu",
        lambda t: _finetune(t, mixed_precision="fp16"),
        ArgumentError,
        "TrainConfig.mixed_precision='fp16'",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there"),
    ),
    (
        "output-dir-is-a-file",
        lambda t: _finetune(t, output_dir=str(_file(t))),
        OutputPathError,
        "TrainConfig.output_dir",
    ),
    (
        "output-dir-under-a-file",
        lambda t: _finetune(t, output_dir=str(_file(t) / "out")),
        OutputPathError,
        "TrainConfig.output_dir",
    ),
    ("read-only-output-dir", _read_only, OutputPathError, "is not writable"),
    (
        "resume-from-missing-checkpoint",
        lambda t: _finetune(t, resume_from=str(t / "no-such-checkpoint")),
        FileNotFoundError,
        "TrainConfig.resume_from",
    ),
    ("disk-full-while-checkpointing", _save_fails, OutputPathError, "TrainConfig.output_dir"),
    (
        "push-adapters-given-a-model",
        lambda t: seemadapt.push_adapters(SEEM.from_config("tiny"), "me/adapters"),
        ArgumentError,
        "folder",
    ),
    (
        "push-offline",
        lambda t: check_push_access("me/adapters"),
        HubAccessError,
        "push_to_hub='me/adapters'",
    ),
    ("push-without-network", _push_without_network, HubAccessError, "push_to_hub='me/adapters'"),
    (
        "push-bad-repo-id",
        lambda t: check_push_access("me/adapters/extra"),
        HubAccessError,
        "push_to_hub='me/adapters/extra'",
    ),
    (
        "push-fine-grained-token-read-only-on-the-owner",
        lambda t: _check_push_with(fine_grained(("user", "me", "repo.content.read"))),
        HubAccessError,
        "lacks the 'repo.write' permission on 'me'",
    ),
    (
        "push-fine-grained-token-for-another-org",
        lambda t: _check_push_with(fine_grained(("org", "lab", "repo.write"))),
        HubAccessError,
        "push_to_hub='me/adapters'",
    ),
    (
        "push-fine-grained-token-for-the-dataset-of-that-name",
        lambda t: _check_push_with(fine_grained(("dataset", "me/adapters", "repo.write"))),
        HubAccessError,
        "the model 'me/adapters'",
    ),
]


@pytest.mark.parametrize(("name", "call", "error", "fragment"), CASES)
def test_bad_input_fails_early_and_clearly(name, call, error, fragment, tmp_path):
    with pytest.raises(error) as caught:
        call(tmp_path)
    assert isinstance(caught.value, ValueError | OSError), type(caught.value).__mro__
    assert fragment in str(caught.value), str(caught.value)
    out = tmp_path / "out"
    assert not [p for p in out.rglob("*") if p.is_file()], sorted(out.rglob("*"))  # nothing half-written


def test_lenient_loading_says_how_many_keys_it_used(tmp_path):
    torch.save({"other.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.warns(UserWarning, match=r"strict=False: used 0 of \d+ model keys"):
        SEEM.from_pretrained(tmp_path / "other.pt", config="tiny", strict=False)


def test_cli_resume_from_a_missing_checkpoint_creates_nothing(tmp_path, capsys):
    argv = ["finetune", "--model", "tiny", "--train", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--set", f"train.resume_from={tmp_path / 'nowhere'}"]) == 2
    assert "resume_from" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_push_offline_fails_before_any_work(tmp_path, capsys):
    argv = ["finetune", "--model", "tiny", "--train", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--max-steps", "1", "--push-to-hub", "me/adapters"]) == 2
    error = capsys.readouterr().err
    assert "push_to_hub='me/adapters'" in error and "HF_HUB_OFFLINE" in error
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- resume checks
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real two-step run with one checkpoint per step."""
    root = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        output_dir=str(root / "run"),
        max_steps=2,
        save_every=1,
        batch_size=1,
        image_size=64,
        num_workers=0,
        tracker=None,
        progress=False,
        mixed_precision="no",
        cache_dir=str(root / "cache"),
    )
    model = SEEM.from_config("tiny")
    seemadapt.apply_adapters(model, "frozen-backbone/adapter-head")
    Trainer(model, make_contract_dataset(2, size=(64, 64)), config).train()
    return config, find_checkpoint(config.output_dir, "latest")


def _resume(config, folder):
    model = SEEM.from_config("tiny")
    seemadapt.apply_adapters(model, "frozen-backbone/adapter-head")
    data = make_contract_dataset(2, size=(64, 64))
    Trainer(model, data, config.replace(resume_from=str(folder), max_steps=3)).train()


def _copy(checkpoint, tmp_path) -> Path:
    folder = tmp_path / "step"
    shutil.copytree(checkpoint[1], folder)
    return folder


def _evil_pickle(path: Path) -> None:
    with path.open("wb") as handle:
        pickle.dump({"random_state": Evil()}, handle)


def test_resume_refuses_a_changed_random_state_file(checkpoint, tmp_path, capsys):
    folder = _copy(checkpoint, tmp_path)
    _evil_pickle(folder / "random_states_0.pkl")
    with pytest.raises(ResumeError, match=r"random_states_0\.pkl changed since the checkpoint was written"):
        _resume(checkpoint[0].replace(output_dir=str(tmp_path / "out")), folder)
    assert "unpickled!" not in capsys.readouterr().out


@pytest.mark.parametrize("name", ["random_states_0.pkl", "optimizer.bin"])
def test_resume_refuses_an_unsafe_file_even_without_checksums(checkpoint, tmp_path, name, capsys):
    folder = _copy(checkpoint, tmp_path)
    state = (folder / STATE_FILE).read_text()
    (folder / STATE_FILE).write_text(state.replace('"files"', '"files_of_an_older_version"'))
    _evil_pickle(folder / name)
    with pytest.raises(ResumeError, match=rf"{name.replace('.', '[.]')} does not load safely") as caught:
        _resume(checkpoint[0].replace(output_dir=str(tmp_path / "out")), folder)
    assert "weights_only=False" not in str(caught.value)
    assert "unpickled!" not in capsys.readouterr().out


def test_resume_refuses_a_missing_file(checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    (folder / "optimizer.bin").unlink()
    with pytest.raises(ResumeError, match=r"optimizer\.bin is missing"):
        _resume(checkpoint[0].replace(output_dir=str(tmp_path / "out")), folder)


def test_a_second_run_in_the_process_may_use_another_precision():
    Accelerator(mixed_precision="no", cpu=True)
    release_precision("bf16")
    assert Accelerator(mixed_precision="bf16", cpu=True).mixed_precision == "bf16"
    release_precision("no")
    assert Accelerator(mixed_precision="no", cpu=True).mixed_precision == "no"


def test_import_seemadapt_is_enough_for_detectron2_tools():
    code = (
        "import seemadapt, sys; from detectron2.data import DatasetCatalog, transforms; print(len(sys.argv))"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
