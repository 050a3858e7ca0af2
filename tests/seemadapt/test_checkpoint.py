"""Checkpoint loading, saving and conversion: the official key lists, every file path, strictness and safety."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import seemadapt.model.checkpoint as checkpoint
from seemadapt.model import SEEM
from seemadapt.model.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    UntrustedCheckpointError,
    compare_state_dicts,
    infer_config,
    load_state_dict_into,
    read_state_dict,
)
from seemadapt.model.convert import convert_checkpoint

DATA = Path(__file__).parent / "data"
CLASSES = ["cat", "dog", "grass"]


def official_shapes(filename: str) -> dict[str, tuple[int, ...]]:
    """``name [d0, d1, ...]`` lines of a key list ('#' lines are comments)."""
    shapes = {}
    for line in (DATA / filename).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, dims = line.split(" ", 1)
        shapes[name] = tuple(int(d) for d in dims.strip("[]").split(",") if d.strip())
    return shapes


@pytest.fixture(scope="module")
def source_state() -> dict[str, torch.Tensor]:
    """A tiny state dict that differs from the seeded init in every tensor, plus the criterion key."""
    state = {key: value + 0.5 for key, value in SEEM.from_config("tiny").state_dict().items()}
    state["criterion.empty_weight"] = torch.ones(134)
    return state


def assert_loaded(model: SEEM, state: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


# ------------------------------------------------------------------------------------------------ official key lists


@pytest.mark.parametrize(
    ("preset", "filename"), [("focalt", "seem_focalt_v1_keys.txt"), ("focall", "seem_focall_v1_keys.txt")]
)
def test_full_size_models_match_the_official_key_lists(preset, filename):
    shapes = official_shapes(filename)
    model = SEEM.from_config(preset, device="meta")
    model_shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    report = compare_state_dicts(model_shapes, shapes)
    assert report.mismatched == [] and report.missing == [] and report.unexpected == []
    assert report.ignored == ["criterion.empty_weight"]
    assert len(report.loaded) == len(shapes) - 1 == len(model_shapes)
    assert report.ok
    # The loader itself, on meta tensors: strict mode accepts the file exactly as the official one is laid out.
    meta_state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    assert load_state_dict_into(model, meta_state, strict=True).ok
    # And the config is recognised from the shapes alone.
    assert infer_config(shapes).name == preset


def test_focalt_checkpoint_is_not_accepted_by_focall_in_strict_mode():
    model = SEEM.from_config("focall", device="meta")
    meta_state = {
        key: torch.empty(s, device="meta") for key, s in official_shapes("seem_focalt_v1_keys.txt").items()
    }
    with pytest.raises(CheckpointError, match=r"shape mismatch for backbone\.patch_embed\.proj\.weight"):
        load_state_dict_into(model, meta_state, strict=True)


@pytest.mark.slow
def test_full_focalt_pt_round_trip(tmp_path):
    """A full-size Focal-T file laid out like the official one (flat dict, fp32), loaded with weights_only=True."""
    shapes = official_shapes("seem_focalt_v1_keys.txt")
    state = {
        key: torch.full(shape, float(index % 1000) / 7) for index, (key, shape) in enumerate(shapes.items())
    }
    path = tmp_path / "seem_focalt_v1.pt"
    torch.save(state, path)
    del state
    model = SEEM.from_pretrained(path, strict=True)
    assert model.config.name == "focalt" and not model.training
    assert (
        model.load_report.ignored == ["criterion.empty_weight"]
        and len(model.load_report.loaded) == len(shapes) - 1
    )
    loaded = model.state_dict()
    for index, key in enumerate(shapes):
        if key in loaded:
            assert bool((loaded[key] == float(index % 1000) / 7).all()), key


# ------------------------------------------------------------------------------------------------ tiny files, every path


def test_flat_pt_loads_every_tensor_and_ignores_the_criterion_key(tmp_path, source_state, caplog):
    path = tmp_path / "weights.pt"
    torch.save(source_state, path)
    with caplog.at_level(logging.INFO, logger="seemadapt.model.checkpoint"):
        model = SEEM.from_pretrained(path, strict=True)
    assert model.config.name == "tiny"  # inferred from the shapes
    assert_loaded(model, source_state)
    assert model.load_report.ignored == ["criterion.empty_weight"] and model.load_report.ok
    assert "Loaded" in caplog.text


@pytest.mark.parametrize("wrap", ["model", "state_dict_module_prefix"])
def test_wrapped_pt_files(tmp_path, source_state, wrap):
    if wrap == "model":
        obj = {"model": source_state, "iteration": 7}
    else:
        obj = {"state_dict": {f"module.{k}": v for k, v in source_state.items()}, "epoch": 1}
    path = tmp_path / "wrapped.pt"
    torch.save(obj, path)
    model = SEEM.from_pretrained(path, config="tiny", strict=True)
    assert_loaded(model, source_state)


def test_folder_with_a_single_pt_file(tmp_path, source_state):
    torch.save(source_state, tmp_path / "only.pt")
    assert_loaded(SEEM.from_pretrained(tmp_path), source_state)


def test_save_pretrained_round_trip_gives_identical_predictions(tmp_path):
    model = SEEM.from_config("tiny")
    with torch.no_grad():
        model.sem_seg_head.predictor.query_feat.weight.add_(0.25)  # not the seeded init
    folder = Path(model.save_pretrained(tmp_path / "saved"))
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS_NAME, CONFIG_NAME])
    stored = json.loads((folder / CONFIG_NAME).read_text())
    assert stored["config"]["name"] == "tiny"
    reloaded = SEEM.from_pretrained(folder, strict=True)
    assert_loaded(reloaded, model.state_dict())
    reloaded.language_encoder.tokenizer = model.language_encoder.tokenizer  # only to save building it twice
    image = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    expected = model.predict(image, CLASSES, task="semantic")["sem_seg"]
    torch.testing.assert_close(
        reloaded.predict(image, CLASSES, task="semantic")["sem_seg"], expected, rtol=0, atol=0
    )


def test_hub_paths_go_through_hf_hub_download(tmp_path, source_state, monkeypatch):
    torch.save(source_state, tmp_path / "seem_tiny.pt")
    SEEM.from_config("tiny").save_pretrained(tmp_path / "ours")
    calls = []

    def fake_download(repo_id, filename, revision=None, token=None):
        calls.append((repo_id, filename, revision, token))
        folder = tmp_path / "ours" if filename in (CONFIG_NAME, WEIGHTS_NAME) else tmp_path
        return str(folder / filename)

    monkeypatch.setattr(checkpoint, "hf_hub_download", fake_download)
    model = SEEM.from_pretrained("someone/seem:seem_tiny.pt", revision="v1", token="hf_secret")
    assert calls == [("someone/seem", "seem_tiny.pt", "v1", "hf_secret")]
    assert_loaded(model, source_state)
    assert "hf_secret" not in str(model.load_report)
    calls.clear()
    SEEM.from_pretrained("someone/seem-adapted")
    assert [c[1] for c in calls] == [CONFIG_NAME, WEIGHTS_NAME]
    with pytest.raises(ValueError, match="only once"):
        SEEM.from_pretrained("someone/seem:a.pt", filename="b.pt")


def test_missing_paths_are_reported_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing file"):
        SEEM.from_pretrained(str(tmp_path / "nowhere" / "x.pt"))


def test_shape_mismatch_is_an_error_in_strict_mode_and_skipped_otherwise(tmp_path, source_state):
    bad = dict(source_state)
    bad["sem_seg_head.predictor.query_feat.weight"] = torch.zeros(9, 64)
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match=r"query_feat\.weight: checkpoint \[9, 64\] vs model \[8, 64\]"):
        SEEM.from_pretrained(path, config="tiny", strict=True)
    with pytest.warns(UserWarning, match=r"strict=False: used \d+ of \d+ model keys"):
        model = SEEM.from_pretrained(path, config="tiny", strict=False)
    report = model.load_report
    assert report.mismatched == [("sem_seg_head.predictor.query_feat.weight", (9, 64), (8, 64))]
    assert not report.ok
    fresh = SEEM.from_config("tiny").sem_seg_head.predictor.query_feat.weight
    assert torch.equal(model.sem_seg_head.predictor.query_feat.weight, fresh)  # left as initialised
    assert torch.equal(model.backbone.norm0.weight, source_state["backbone.norm0.weight"])


def test_missing_and_unexpected_keys_in_strict_mode(tmp_path, source_state):
    missing = {k: v for k, v in source_state.items() if k != "backbone.norm3.bias"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: backbone\.norm3\.bias"):
        SEEM.from_pretrained(tmp_path / "missing.pt", config="tiny", strict=True)
    with pytest.warns(UserWarning, match="strict=False"):
        lenient = SEEM.from_pretrained(tmp_path / "missing.pt", config="tiny", strict=False)
    assert lenient.load_report.missing == ["backbone.norm3.bias"]
    extra = dict(source_state, **{"something.else": torch.zeros(2)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"unexpected checkpoint keys: something\.else"):
        SEEM.from_pretrained(tmp_path / "extra.pt", config="tiny", strict=True)


def test_adapter_keys_are_documented_missing(source_state):
    from seemadapt.adapters.modules import ChannelSpatialAdapter

    model = SEEM.from_config("tiny")
    _, block, channels = next(model.backbone.blocks())
    block.adapter = ChannelSpatialAdapter(channels)
    report = load_state_dict_into(model, source_state, strict=True)
    assert report.ok and report.missing == report.allowed_missing
    assert report.missing and all(".adapter." in key for key in report.missing)


class NotATensor:
    """A custom object: loading it needs full unpickling."""

    value = 3


def test_pickled_objects_need_trust_pickle(tmp_path, source_state):
    path = tmp_path / "pickled.pt"
    torch.save({"model": source_state, "cfg": NotATensor()}, path)
    with pytest.raises(UntrustedCheckpointError, match="trust_pickle=True"):
        SEEM.from_pretrained(path, config="tiny")
    with pytest.warns(UserWarning, match="weights_only=False"):
        model = SEEM.from_pretrained(path, config="tiny", trust_pickle=True)
    assert_loaded(model, source_state)


def test_convert_checkpoint_writes_a_safetensors_folder(tmp_path, source_state):
    torch.save(source_state, tmp_path / "seem_tiny.pt")
    folder = convert_checkpoint(tmp_path / "seem_tiny.pt", tmp_path / "converted")
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS_NAME, CONFIG_NAME])
    state = read_state_dict(folder / WEIGHTS_NAME)
    assert "criterion.empty_weight" not in state
    assert_loaded(SEEM.from_pretrained(folder, strict=True), source_state)
    bad = dict(source_state)
    bad["backbone.norm0.weight"] = torch.zeros(3)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"norm0\.weight"):
        convert_checkpoint(tmp_path / "bad.pt", tmp_path / "never", config="tiny")
    assert not (tmp_path / "never").exists()


def test_config_inference_needs_a_known_geometry():
    shapes = {
        "backbone.patch_embed.proj.weight": (40, 3, 7, 7),
        "backbone.layers.0.blocks.0.dw1.weight": (40, 1, 3, 3),
    }
    with pytest.raises(CheckpointError, match="pass config="):
        infer_config(shapes)
    assert infer_config(shapes, filename="my_seem_focall_v1.pt").name == "focall"


def test_config_comes_from_the_shapes_before_the_file_name():
    shapes = official_shapes("seem_focall_v1_keys.txt")
    with pytest.warns(UserWarning, match="shapes are those of focall"):
        assert infer_config(shapes, filename="seem_focalt_v1.pt").name == "focall"


class BaseLayerWrapper(torch.nn.Module):
    """Mimics peft's LoRA wrapping: the original layer moves to ``base_layer``."""

    def __init__(self, layer: torch.nn.Linear) -> None:
        super().__init__()
        self.base_layer = layer
        self.lora_A = torch.nn.Linear(layer.in_features, 2, bias=False)

    def forward(self, x):
        return self.base_layer(x)


def test_base_checkpoint_loads_into_a_lora_wrapped_model(source_state):
    model = SEEM.from_config("tiny")
    layers = model.sem_seg_head.predictor.mask_embed.layers
    layers[0] = BaseLayerWrapper(layers[0])
    report = load_state_dict_into(model, source_state, strict=True)
    assert report.ok and report.missing == ["sem_seg_head.predictor.mask_embed.layers.0.lora_A.weight"]
    key = "sem_seg_head.predictor.mask_embed.layers.0.weight"
    assert torch.equal(layers[0].base_layer.weight, source_state[key])
