"""Bad inputs and faults a new user meets, one row each: the SDK's own exception type (a ValueError / OSError
subclass), a message that names the field, and nothing left behind. Plus the faults that must be survived: a
damaged shard is found by its checksum, a failed push keeps the dataset, a closed pipe prints no traceback."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from _shard_worker import FakeGenerator  # loaded by tests/diffsynth/conftest.py
from fake_hub import fine_grained, whoami  # loaded by tests/conftest.py
from PIL import Image as PILImage
from unwritable import call_where_unwritable, read_only_folder

import diffsynth
from diffsynth import hub
from diffsynth.cli import main
from diffsynth.errors import ArgumentError, HubAccessError, ModelNotFoundError, OutputPathError
from diffsynth.shards import ShardMismatchError, load_shards, run_sharded
from diffsynth.shards.writer import ShardWriter
from segcontract.testing import make_contract_dataset


class FakeApi:
    """The Hub as whoami sees it: ``user`` owns the token (None: no token saved)."""

    user: str | None = "me"
    role = "write"
    grants: dict | None = None  # a fine-grained token's permissions

    def __init__(self, token=None):
        self.token = token

    def whoami(self):
        if FakeApi.user is None:
            raise OSError("You must be logged in: no token found")
        return whoami(FakeApi.user, FakeApi.role, FakeApi.grants)


def online_hub(monkeypatch, user="me", role="write", grants=None):
    FakeApi.user, FakeApi.role, FakeApi.grants = user, role, grants
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub.hub_constants, "HF_HUB_OFFLINE", False)


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


def _disk_full(tmp_path, monkeypatch):
    def add(self, row):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ShardWriter, "add", add)
    run_sharded(FakeGenerator(3), tmp_path / "out", shard_size=2)


def _no_token(tmp_path, monkeypatch):
    online_hub(monkeypatch, user=None)
    run_sharded(FakeGenerator(2), tmp_path / "out", push_to_hub="me/data")


def _foreign_repo(tmp_path, monkeypatch):
    online_hub(monkeypatch, user="me")
    run_sharded(FakeGenerator(2), tmp_path / "out", push_to_hub="someone-else/data")


def _read_only_token(tmp_path, monkeypatch):
    online_hub(monkeypatch, role="read")
    run_sharded(FakeGenerator(2), tmp_path / "out", push_to_hub="me/data")


def _push_without_network(tmp_path, monkeypatch):
    online_hub(monkeypatch)

    def no_network(*args, **kwargs):
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(FakeApi, "create_repo", no_network, raising=False)
    diffsynth.push_to_hub(make_contract_dataset(1), "me/data")


def _read_only(tmp_path, monkeypatch, code: str):
    """An output folder this user cannot write, for real (tests/unwritable.py: also when the tests run as root)."""
    with read_only_folder(tmp_path) as folder:
        call_where_unwritable(code, folder)


GENERATE_INTO_FOLDER = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from _shard_worker import FakeGenerator
from diffsynth.shards import run_sharded
run_sharded(FakeGenerator(2), folder / "out")
"""
EXPORT_INTO_FOLDER = """
import diffsynth
from segcontract.testing import make_contract_dataset
diffsynth.export_coco(make_contract_dataset(1), folder / "out")
"""


def _fine_grained_push(tmp_path, monkeypatch, grants):
    online_hub(monkeypatch, role="fineGrained", grants=grants)
    run_sharded(FakeGenerator(2), tmp_path / "out", push_to_hub="me/data")


# (case id, call(tmp_path, monkeypatch), exception type, text the message must hold)
CASES = [
    (
        "classes-a-string",
        lambda t, m: diffsynth.generate("cat", 1, output_dir=t / "out"),
        ArgumentError,
        "classes",
    ),
    (
        "classes-not-a-list",
        lambda t, m: diffsynth.generate(3, 1, output_dir=t / "out"),
        ArgumentError,
        "classes",
    ),
    (
        "unknown-tiny-model",
        lambda t, m: diffsynth.generate(["cat"], 1, model="tiny-sd9", output_dir=t / "out", progress=False),
        ModelNotFoundError,
        "model='tiny-sd9'",
    ),
    (
        "typo-hub-id-offline",
        lambda t, m: diffsynth.generate(["cat"], 1, model="nobody/no-such-model", output_dir=t / "out"),
        ModelNotFoundError,
        "model='nobody/no-such-model'",
    ),
    (
        "folder-without-pipeline",
        lambda t, m: diffsynth.generate(["cat"], 1, model=str(t), output_dir=t / "out"),
        ModelNotFoundError,
        "not a diffusers pipeline folder",
    ),
    pytest.param(
        "cuda-without-gpu",
        lambda t, m: diffsynth.generate(["cat"], 1, device="cuda", output_dir=t / "out", progress=False),
        ArgumentError,
        "device='cuda'",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there"),
    ),
    (
        "output-dir-is-a-file",
        lambda t, m: run_sharded(FakeGenerator(2), _file(t) / "out"),
        OutputPathError,
        "output_dir=",
    ),
    (
        "output-dir-a-file-itself",
        lambda t, m: run_sharded(FakeGenerator(2), _file(t)),
        OutputPathError,
        "is a file",
    ),
    ("disk-full-while-generating", _disk_full, OutputPathError, "disk is full"),
    (
        "read-only-output-dir",
        lambda t, m: _read_only(t, m, GENERATE_INTO_FOLDER),
        OutputPathError,
        "is not writable",
    ),
    (
        "export-coco-into-a-read-only-folder",
        lambda t, m: _read_only(t, m, EXPORT_INTO_FOLDER),
        OutputPathError,
        "export_coco(folder)",
    ),
    (
        "export-coco-into-a-file",
        lambda t, m: diffsynth.export_coco(make_contract_dataset(1), _file(t)),
        OutputPathError,
        "export_coco(folder)",
    ),
    (
        "export-coco-of-a-list",
        lambda t, m: diffsynth.export_coco([1, 2], t / "out"),
        ArgumentError,
        "export_coco(ds",
    ),
    (
        "push-offline",
        lambda t, m: run_sharded(FakeGenerator(2), t / "out", push_to_hub="me/data"),
        HubAccessError,
        "HF_HUB_OFFLINE",
    ),
    (
        "push-bad-repo-id",
        lambda t, m: diffsynth.generate(["cat"], 1, output_dir=t / "out", push_to_hub="a/b/c"),
        ValueError,
        "push_to_hub",
    ),
    ("push-no-token", _no_token, HubAccessError, "no Hub token"),
    ("push-without-network", _push_without_network, HubAccessError, "push_to_hub='me/data'"),
    ("push-repo-of-another-owner", _foreign_repo, HubAccessError, "someone-else"),
    ("push-read-only-token", _read_only_token, HubAccessError, "read-only"),
    (
        "push-fine-grained-token-read-only-on-the-owner",
        lambda t, m: _fine_grained_push(t, m, fine_grained(("user", "me", "repo.content.read"))),
        HubAccessError,
        "lacks the 'repo.write' permission on 'me'",
    ),
    (
        "push-fine-grained-token-for-another-repo",
        lambda t, m: _fine_grained_push(t, m, fine_grained(("dataset", "me/other", "repo.write"))),
        HubAccessError,
        "push_to_hub='me/data'",
    ),
    (
        "push-fine-grained-token-for-the-model-repo-of-that-name",
        lambda t, m: _fine_grained_push(t, m, fine_grained(("model", "me/data", "repo.write"))),
        HubAccessError,
        "the dataset 'me/data'",
    ),
]


@pytest.mark.parametrize(("name", "call", "error", "fragment"), CASES)
def test_bad_input_fails_early_and_clearly(name, call, error, fragment, tmp_path, monkeypatch):
    with pytest.raises(error) as caught:
        call(tmp_path, monkeypatch)
    assert isinstance(caught.value, ValueError | OSError), type(caught.value).__mro__
    assert fragment in str(caught.value), str(caught.value)
    out = tmp_path / "out"
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) if out.is_dir() else []
    # Nothing, or (disk full) only the folder's bookkeeping: no shard, no temporary file.
    assert not [p for p in left if p.endswith(".parquet") or ".tmp" in p], left
    if name != "disk-full-while-generating":
        assert not out.exists(), left


def test_a_flipped_bit_in_a_finished_shard_is_found_and_remade(tmp_path):
    out = tmp_path / "out"
    first = run_sharded(FakeGenerator(4), out, shard_size=2)
    shard = out / "data" / "train-00000-of-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01  # inside the image bytes: the parquet file stays readable
    shard.write_bytes(bytes(data))
    with pytest.raises(
        ShardMismatchError, match=r"train-00000-of-00002\.parquet changed since it was written"
    ):
        load_shards(out)
    again = run_sharded(FakeGenerator(4), out, shard_size=2)  # the resume checks the checksum and remakes it
    assert [r["image"].tobytes() for r in again] == [r["image"].tobytes() for r in first]
    assert load_shards(out).num_rows == 4


def test_cli_bad_yaml_names_the_flag_and_writes_nothing(tmp_path, capsys):
    config = tmp_path / "gen.yaml"
    config.write_text("classes: [cat\nnum_images: 2\n")
    assert main(["generate", "--config", str(config), "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "--config" in error and "not valid YAML" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_cli_output_into_a_file_is_one_line(tmp_path, capsys):
    argv = [
        "generate",
        "--classes",
        "cat",
        "--num-images",
        "1",
        "--output",
        str(_file(tmp_path) / "x"),
        "--quiet",
    ]
    assert main(argv) == 2
    assert "output_dir=" in capsys.readouterr().err


def test_cli_push_offline_fails_before_drawing(tmp_path, capsys):
    argv = ["generate", "--classes", "cat", "--num-images", "1", "--output", str(tmp_path / "out")]
    assert main([*argv, "--push-to-hub", "me/data", "--quiet"]) == 2
    assert "--push-to-hub" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_failed_push_keeps_the_dataset(tmp_path, monkeypatch, capsys):
    online_hub(monkeypatch)

    def refuse(*args, **kwargs):
        raise ConnectionError("the network went away")

    monkeypatch.setattr(FakeApi, "create_repo", refuse, raising=False)
    monkeypatch.chdir(tmp_path)
    argv = ["generate", "--classes", "cat", "--num-images", "1", "--quiet", "--push-to-hub", "me/data"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "the push failed" in error and "kept in diffsynth-unpushed-me--data" in error
    assert diffsynth.load_any(str(tmp_path / "diffsynth-unpushed-me--data")).num_rows == 1


def test_cli_health_into_a_closed_pipe_prints_no_traceback(tmp_path):
    make_contract_dataset(2).save_to_disk(str(tmp_path / "ds"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    reader = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    writer = subprocess.run(
        [sys.executable, "-m", "diffsynth.cli", "health", str(tmp_path / "ds"), "--json"],
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        env=env,
        check=False,
    )
    reader.stdin.close()
    reader.wait()
    assert b"Traceback" not in writer.stderr and b"BrokenPipe" not in writer.stderr, writer.stderr.decode()


def test_readme_diffsynth_example_runs_as_written(tmp_path, monkeypatch):
    """The README's example with only what needs the network or a GPU made small: the tiny model, 2 images."""
    readme = Path(__file__).resolve().parents[2] / "README.md"
    code = re.search(r"## diffsynth\n\n```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.S).group(
        1
    )
    code = code.replace('"stable-diffusion-v1-5/stable-diffusion-v1-5"', '"tiny"').replace(
        "num_images=500", "num_images=2"
    )
    (tmp_path / "photos").mkdir()
    PILImage.new("RGB", (64, 64), (120, 90, 60)).save(tmp_path / "photos" / "wall.png")
    pushed = []
    monkeypatch.setattr(hub, "stage_and_upload", lambda *args, **kwargs: pushed.append(args) or "commit")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(readme), "exec"), {})
    assert (tmp_path / "coco" / "panoptic_train.json").is_file() and pushed
