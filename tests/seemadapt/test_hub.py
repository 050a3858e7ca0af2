"""Adapter folders: save -> reload gives identical predictions, geometry checks, model card, Hub paths (mocked)."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml
from safetensors.torch import load_file

from seemadapt import adapter_files, hub
from seemadapt.adapters import AdapterPlacement, LoRASpec, adapter_state_dict, apply_adapters, get_strategy
from seemadapt.hub import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    AdapterMismatchError,
    load_adapters,
    load_model,
    push_adapters,
    read_adapter_config,
    save_adapters,
)
from seemadapt.model import SEEM

CLASSES = ["square", "disc", "background"]
STRATEGY = "adapter-backbone/adapter-head"
TOKEN = "hf_SeCrEtToKeN1234567890abcdefXYZ"


def _perturb(model: SEEM, seed: int = 0) -> None:
    """Move every saved weight away from its (identity) initialisation, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in adapter_state_dict(model).values():
            if value.is_floating_point():
                value.add_(torch.randn(value.shape, generator=generator) * 0.05)


@pytest.fixture(scope="module")
def trained():
    model = SEEM.from_config("tiny").eval()
    apply_adapters(model, STRATEGY)
    _perturb(model)
    return model


@pytest.fixture(scope="module")
def folder(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("adapters")
    metrics = {"miou": 0.5, "pq": float("nan"), "iou/square": 0.25, "iou/disc": 0.75, "iou/background": 0.5}
    save_adapters(
        trained,
        path,
        placement=STRATEGY,
        base_model="tiny",
        classes=CLASSES,
        thing_classes=["square", "disc"],
        metrics=metrics,
        config={"lr": 1e-4, "max_steps": 10},
        datasets=["me/wet-damage-synthetic", "/not/a/hub/id"],
    )
    return path


@pytest.fixture(scope="module")
def image():
    return torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_reload_into_a_fresh_model_gives_identical_predictions(trained, folder, image):
    fresh = SEEM.from_config("tiny").eval()
    base = fresh.predict(image, CLASSES)["sem_seg"]
    loaded = load_adapters(fresh, folder)
    assert loaded is fresh
    expected = trained.predict(image, CLASSES)["sem_seg"]
    assert not torch.allclose(base, expected)  # the saved weights matter
    assert torch.equal(loaded.predict(image, CLASSES)["sem_seg"], expected)
    state, reference = loaded.state_dict(), trained.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)


def test_files_hold_only_adapter_and_trained_weights(trained, folder):
    weights = load_file(str(folder / ADAPTER_WEIGHTS_NAME))
    assert set(weights) == set(adapter_state_dict(trained))
    assert not any(k.startswith("sem_seg_head.predictor.lang_encoder.") for k in weights)
    assert (
        "backbone.patch_embed.proj.weight" not in weights
    )  # frozen base weights stay in the base checkpoint
    assert any(".adapter." in k for k in weights)
    assert not (folder / "adapter_config.json").exists()  # would be parsed as a peft config by the Hub
    config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
    assert config["format"] == "seemadapt-adapters"
    assert config["strategy"] == STRATEGY
    assert config["base_model"] == "tiny" and config["config_name"] == "tiny"
    assert config["classes"] == CLASSES and config["thing_classes"] == ["square", "disc"]
    assert config["metrics"]["miou"] == 0.5 and config["metrics"]["pq"] is None
    assert AdapterPlacement.from_dict(config["placement"]) == get_strategy(STRATEGY)
    assert config["parameters"]["backbone adapters"]["trainable"] > 0
    assert config["parameters"]["backbone"]["trainable"] == 0
    assert {"seemadapt", "torch", "safetensors", "huggingface_hub"} <= set(config["versions"])
    assert config["datasets"] == ["me/wet-damage-synthetic"]
    assert not list(folder.glob(".seemadapt-staging-*"))


def test_model_card(folder):
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "seemadapt"
    assert meta["pipeline_tag"] == "image-segmentation"
    assert {"image-segmentation", "seem", "adapters"} <= set(meta["tags"])
    assert meta["datasets"] == ["me/wet-damage-synthetic"]
    assert meta["license"] == "apache-2.0"
    assert "base_model" not in meta  # "tiny" is a preset, not a Hub repo
    assert "| backbone adapters |" in body and "| **total** |" in body
    assert "| mIoU | 50.00 |" in body and "| PQ | n/a |" in body
    assert "| disc | 75.00 |" in body
    assert 'SEEM.from_config("tiny")' in body and "load_adapters" in body


def test_card_links_the_hub_base_model(trained, tmp_path):
    save_adapters(trained, tmp_path, base_model="xdecoder/SEEM:seem_focalt_v1.pt", classes=CLASSES)
    meta = yaml.safe_load((tmp_path / "README.md").read_text().split("---")[1])
    assert meta["base_model"] == "xdecoder/SEEM"
    assert 'SEEM.from_pretrained("xdecoder/SEEM:seem_focalt_v1.pt")' in (tmp_path / "README.md").read_text()


def test_other_geometry_is_refused_with_the_base_to_load(folder):
    other = SEEM.from_config("focalt", device="meta")
    with pytest.raises(AdapterMismatchError, match=r"backbone\.embed_dim.*SEEM\.from_config\('tiny'\)"):
        load_adapters(other, folder)


def test_other_base_weights_warn(folder):
    model = SEEM.from_config(replace(SEEM.from_config("tiny", device="meta").config, seed=1))
    with pytest.warns(UserWarning, match="base weights"):
        load_adapters(model, folder)
    same = SEEM.from_config("tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_adapters(same, folder)


def test_model_with_adapters_and_wrong_weights_are_refused(folder, trained, tmp_path):
    with pytest.raises(AdapterMismatchError, match="already carries adapters"):
        load_adapters(trained, folder)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / ADAPTER_CONFIG_NAME).write_text((folder / ADAPTER_CONFIG_NAME).read_text())
    weights = load_file(str(folder / ADAPTER_WEIGHTS_NAME))
    weights.pop(sorted(weights)[0])
    from safetensors.torch import save_file

    save_file(weights, str(broken / ADAPTER_WEIGHTS_NAME))
    with pytest.raises(AdapterMismatchError, match="1 missing"):
        load_adapters(SEEM.from_config("tiny"), broken)
    with pytest.raises(FileNotFoundError, match=ADAPTER_CONFIG_NAME):
        load_adapters(SEEM.from_config("tiny"), tmp_path)
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a Hub repo"):
        load_adapters(SEEM.from_config("tiny"), "no such folder")


def test_save_refuses_a_different_placement_and_missing_classes(trained, tmp_path):
    with pytest.raises(AdapterMismatchError, match="placement"):
        save_adapters(
            trained, tmp_path, placement="frozen-backbone/full-head", base_model="tiny", classes=CLASSES
        )
    with pytest.raises(ValueError, match="classes"):
        save_adapters(trained, tmp_path, base_model="tiny", classes=[])
    with pytest.raises(ValueError, match="thing_classes"):
        save_adapters(trained, tmp_path, base_model="tiny", classes=CLASSES, thing_classes=["lamp"])
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_hub_repo_downloads_only_the_adapter_files(folder, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folder)

    monkeypatch.setattr(adapter_files, "snapshot_download", fake_snapshot_download)
    model = load_model(adapters="me/seem-shapes", revision="v1", token=TOKEN)
    assert isinstance(model, SEEM) and model.config.name == "tiny"  # the base named by the adapters
    assert {repo for repo, _ in calls} == {"me/seem-shapes"}
    for _, kwargs in calls:
        assert kwargs["revision"] == "v1" and kwargs["token"] == TOKEN
        patterns = kwargs["allow_patterns"]
        assert ADAPTER_WEIGHTS_NAME in patterns and ADAPTER_CONFIG_NAME in patterns
        assert "*" not in patterns and "README.md" not in patterns
    assert read_adapter_config("me/seem-shapes").classes == CLASSES


class FakeApi:
    """Records the HfApi calls push_adapters makes."""

    instances: ClassVar[list[FakeApi]] = []

    def __init__(self, token=None):
        self.token = token
        self.calls: list[tuple[str, tuple, dict]] = []
        FakeApi.instances.append(self)

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))
        return f"https://huggingface.co/{args[0] if args else kwargs['repo_id']}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", (), kwargs))

        class Commit:
            commit_url = f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"

        return Commit()


def test_push_creates_the_repo_and_uploads_once_without_writing_the_token(
    folder, tmp_path, monkeypatch, caplog
):
    folder = Path(shutil.copytree(folder, tmp_path / "copy"))
    FakeApi.instances.clear()
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    with caplog.at_level(logging.DEBUG):
        url = push_adapters(folder, "me/seem-shapes", private=True, token=TOKEN)
    assert url.endswith("/commit/abc")
    (api,) = FakeApi.instances
    assert api.token == TOKEN
    assert [name for name, _, _ in api.calls] == ["create_repo", "upload_folder"]
    _, args, kwargs = api.calls[0]
    assert (args[0] if args else kwargs["repo_id"]) == "me/seem-shapes"
    assert kwargs["exist_ok"] is True and kwargs["private"] is True
    upload = api.calls[1][2]
    assert upload["repo_id"] == "me/seem-shapes" and Path(upload["folder_path"]) == folder
    assert upload["repo_type"] == "model" and upload["commit_message"]
    for path in folder.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in caplog.text
    assert '"me/seem-shapes"' in (folder / "README.md").read_text()  # the usage snippet names the repo


def test_push_checks_the_folder_and_repo_id(tmp_path, folder, monkeypatch):
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    with pytest.raises(FileNotFoundError, match="save_adapters"):
        push_adapters(tmp_path, "me/repo")
    with pytest.raises(ValueError, match="owner/name"):
        push_adapters(folder, "not a repo")


@pytest.mark.slow
def test_lora_is_saved_in_peft_layout_and_reloads(tmp_path, image):
    placement = AdapterPlacement(
        head_adapters=True,
        lora=LoRASpec(targets=("sem_seg_head.predictor.transformer_ffn_layers.*.linear1",), r=4),
    )
    model = SEEM.from_config("tiny").eval()
    apply_adapters(model, placement)
    _perturb(model, seed=2)
    save_adapters(model, tmp_path, base_model="tiny", classes=CLASSES)
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert any("lora_A" in k for k in load_file(str(tmp_path / ADAPTER_WEIGHTS_NAME)))
    assert "lora" in yaml.safe_load((tmp_path / "README.md").read_text().split("---")[1])["tags"]
    loaded = load_adapters(SEEM.from_config("tiny").eval(), tmp_path)
    assert torch.equal(loaded.predict(image, CLASSES)["sem_seg"], model.predict(image, CLASSES)["sem_seg"])
