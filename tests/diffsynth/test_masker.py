"""AttentionMasker end to end on the tiny SD 1.x / 2.x / SDXL pipelines, text-to-image and image-to-image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffsynth.masker import AttentionMasker, MaskerConfig, MaskResult
from diffsynth.masks import label
from diffsynth.testing import tiny_pipeline
from diffsynth.visualize import attention_figure


@pytest.fixture(scope="module")
def pipes():
    return {kind: tiny_pipeline(kind) for kind in ("sd1", "sd2", "sdxl")}


def _config(**kwargs) -> MaskerConfig:
    # Random-weight self-attention is nearly uniform, so (A_S)^4 leaves a spread of ~1e-3 or less of the
    # map's level (sometimes only float noise, which normalize() treats as "no signal"). tau=1 keeps a
    # clear spatial signal, so comparisons below test the capture and not float rounding.
    kwargs.setdefault("tau", 1)
    kwargs.setdefault("num_inference_steps", 3)
    kwargs.setdefault("progress", False)
    return MaskerConfig(**kwargs)


PROMPTS = ["light mold on a wall", "a broken pipe and a stain"]
CLASSES = [["light mold", "wall"], ["broken pipe", "stain"]]


def _init_image(seed: int = 0, size=(128, 128)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def _check_result(result: MaskResult, k: int, size=(128, 128)) -> None:
    h, w = size
    assert result.image.size == (w, h) and result.image.mode == "RGB"
    assert result.label_map.shape == (h, w) and result.label_map.dtype == np.uint8
    assert set(np.unique(result.label_map)) <= {*range(k + 1), 255}
    assert result.soft_maps.shape == result.cross_maps.shape == (k, h, w)
    assert result.soft_maps.dtype == np.float32
    assert result.soft_maps.min() >= 0 and result.soft_maps.max() <= 1
    # The label map is the thresholded soft maps; labels come from the unclamped maps, so they may differ only
    # where two stored (clamped) maps are both 1.
    tied = (result.soft_maps == 1).sum(axis=0) >= 2
    assert (label(result.soft_maps) == result.label_map)[~tied].all()


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
def test_end_to_end(pipes, kind, mode):
    masker = AttentionMasker(pipes[kind], _config(num_inference_steps=5))
    init = [_init_image(0), _init_image(1)] if mode == "img2img" else None
    results = masker(PROMPTS, CLASSES, [1, 2], init_images=init, strength=0.4)
    assert len(results) == 2
    for result, classes, seed in zip(results, CLASSES, [1, 2]):
        _check_result(result, len(classes))
        meta = result.metadata
        assert result.seed == seed and result.classes == classes and result.class_ids == [0, 1]
        assert result.background_id == 2 and result.ignore_index == 255
        assert meta["mode"] == mode
        assert meta["steps_executed"] == (int(5 * 0.4) if mode == "img2img" else 5)
        assert meta["steps_captured"] == list(range(meta["steps_executed"]))
        assert meta["resolutions"] == {"latent": [16, 16], "self": [8, 8], "cross": [[4, 4]]}
        assert meta["layers"]["self"] and meta["layers"]["cross"]
        assert all(".attn1" in name for name in meta["layers"]["self"])
        assert all(".attn2" in name for name in meta["layers"]["cross"])
    assert results[0].metadata["token_spans"] == [
        {"name": "light mold", "positions": [1, 2]},
        {"name": "wall", "positions": [5]},
    ]
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in pipes[kind].unet.attn_processors.values())


def test_missing_class_names_class_and_prompt(pipes):
    masker = AttentionMasker(pipes["sd1"], _config())
    with pytest.raises(ValueError, match=r"'stain'.*'light mold on a wall'"):
        masker(["light mold on a wall"], [["stain"]], [0])


def test_same_seed_same_masks_and_batch_equals_singles(pipes):
    masker = AttentionMasker(pipes["sd1"], _config())
    prompts = ["light mold on a wall", "a broken pipe", "a stain on a ceiling"]
    classes = [["light mold", "wall"], ["broken pipe"], ["stain", "ceiling"]]
    seeds = [4, 5, 6]
    batch = masker(prompts, classes, seeds)
    for i in range(3):
        single = masker([prompts[i]], [classes[i]], [seeds[i]])[0]
        assert single.soft_maps.max() == 1.0  # a real signal, not the all-zero "no signal" map
        np.testing.assert_allclose(single.soft_maps, batch[i].soft_maps, atol=1e-3)
        np.testing.assert_allclose(single.cross_maps, batch[i].cross_maps, atol=1e-4)
        # Labels may only differ where a score sits within float noise of a threshold or of another class.
        differs = single.label_map != batch[i].label_map
        ranked = np.sort(single.soft_maps, axis=0)[::-1]
        near = np.abs(ranked[0][..., None] - np.array([0.5, 0.6])).min(-1) < 2e-3
        if len(ranked) > 1:
            near |= ranked[0] - ranked[1] < 2e-3
        assert differs.mean() < 0.01 and not (differs & ~near).any()
    again = masker(prompts[:1], classes[:1], seeds[:1])[0]
    first = masker(prompts[:1], classes[:1], seeds[:1])[0]
    assert np.array_equal(again.label_map, first.label_map)
    assert np.array_equal(again.soft_maps, first.soft_maps)


def test_non_square_images(pipes):
    masker = AttentionMasker(pipes["sd1"], _config(height=128, width=192))
    (result,) = masker(["light mold on a wall"], [["light mold", "wall"]], [0])
    _check_result(result, 2, size=(128, 192))
    assert result.metadata["resolutions"] == {"latent": [16, 24], "self": [8, 12], "cross": [[4, 6]]}
    (result,) = masker(["mold"], [["mold"]], [0], init_images=[_init_image(size=(64, 64))])
    _check_result(result, 1, size=(128, 192))


def test_global_categories_and_background_off(pipes):
    categories = ["stain", "wall", "broken pipe", "light mold"]
    masker = AttentionMasker(pipes["sd1"], _config(threshold=0.3, uncertainty_threshold=0.2))
    results = masker(PROMPTS, CLASSES, [1, 2], categories=categories)
    assert results[0].class_ids == [3, 1] and results[1].class_ids == [2, 0]
    for result in results:
        assert result.background_id == 4
        allowed = {*result.class_ids, 4, 255}
        assert set(np.unique(result.label_map)) <= allowed
        local = label(result.soft_maps, 0.3, 0.2)
        lut = np.array([*result.class_ids, 4] + [255] * 253, dtype=np.uint8)
        assert (lut[local] == result.label_map).all()
    with pytest.raises(ValueError, match=r"\['wall'\].*not in categories"):
        masker(PROMPTS[:1], CLASSES[:1], [1], categories=["light mold"])

    off = AttentionMasker(pipes["sd1"], _config(background=False))
    (result,) = off(PROMPTS[:1], CLASSES[:1], [1])
    assert result.background_id == 255
    assert set(np.unique(result.label_map)) <= {0, 1, 255}
    assert (result.label_map == 255).sum() >= (label(result.soft_maps) >= 2).sum()


def test_class_prompt_mode(pipes):
    pipe = pipes["sd1"]
    # Caption without the class names: fine in class-prompt mode (an error otherwise).
    masker = AttentionMasker(pipe, _config(class_prompt=True))
    (result,) = masker(["a dark bathroom"], [["mold", "broken pipe"]], [3])
    assert result.prompt == "a dark bathroom; mold, broken pipe"
    assert result.metadata["key_prompt"] == "mold, broken pipe"
    assert result.metadata["token_spans"] == [
        {"name": "mold", "positions": [1]},
        {"name": "broken pipe", "positions": [3, 4]},
    ]
    _check_result(result, 2)

    # When the class prompt is the caption itself, keys from the class prompt are the caption's keys,
    # so the maps must equal normal mode's; a different class prompt must change them.
    same = AttentionMasker(pipe, _config(class_prompt=True, append_class_names=False))
    normal = AttentionMasker(pipe, _config())
    a = same(["mold, broken pipe"], [["mold", "broken pipe"]], [3])[0]
    b = normal(["mold, broken pipe"], [["mold", "broken pipe"]], [3])[0]
    np.testing.assert_allclose(a.cross_maps, b.cross_maps, atol=1e-5)
    np.testing.assert_allclose(a.soft_maps, b.soft_maps, atol=1e-5)
    c = same(["mold, broken pipe"], [["broken pipe", "mold"]], [3])[0]  # class prompt "broken pipe, mold"
    assert not np.allclose(c.cross_maps[::-1], b.cross_maps, atol=1e-3)


def test_class_prompt_mode_sdxl(pipes):
    masker = AttentionMasker(pipes["sdxl"], _config(class_prompt=True))
    (result,) = masker(["a dark bathroom"], [["mold"]], [3])
    _check_result(result, 1)


def test_softmax_over_class_tokens_only(pipes):
    masker = AttentionMasker(pipes["sd1"], _config(softmax="classes"))
    (two,) = masker(["light mold on a wall"], [["light mold", "wall"]], [0])
    _check_result(two, 2)
    # The degenerate single one-token class: the map is 1 everywhere, normalised to 0 -> all background.
    (one,) = masker(["mold on a wall"], [["mold"]], [0])
    assert (one.cross_maps == 0).all() and (one.soft_maps == 0).all() and (one.label_map == 1).all()


def test_guidance_one_and_step_window(pipes):
    masker = AttentionMasker(
        pipes["sd2"], _config(guidance_scale=1.0, num_inference_steps=4, step_window=(0.5, 1.0))
    )
    (result,) = masker(["mold on a wall"], [["mold", "wall"]], [0])
    _check_result(result, 2)
    assert result.metadata["steps_captured"] == [2, 3]
    empty = AttentionMasker(pipes["sd2"], _config(num_inference_steps=4, step_indices=(7, None)))
    with pytest.raises(RuntimeError, match="captured none of the 4 executed steps"):
        empty(["mold"], [["mold"]], [0])
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in pipes["sd2"].unet.attn_processors.values())


def test_resolution_choices(pipes):
    masker = AttentionMasker(pipes["sd1"], _config(self_resolution=16, cross_resolution=(0.25, 0.5)))
    assert masker.resolutions() == {"latent": [16, 16], "self": [16, 16], "cross": [[8, 8], [4, 4]]}
    (result,) = masker(["mold on a wall"], [["mold", "wall"]], [0])
    _check_result(result, 2)
    with pytest.raises(ValueError, match=r"self_resolution=1.0.*latent/\[2, 4\]"):
        AttentionMasker(pipes["sdxl"], _config(self_resolution=1.0))
    with pytest.raises(ValueError, match="cross_resolution=5"):
        AttentionMasker(pipes["sd1"], _config(cross_resolution=5))


def test_input_validation(pipes):
    masker = AttentionMasker(pipes["sd1"], _config())
    with pytest.raises(ValueError, match="equally long"):
        masker(["mold"], [["mold"], ["wall"]], [0])
    with pytest.raises(ValueError, match="empty"):
        masker(["mold"], [[]], [0])
    with pytest.raises(ValueError, match="one each"):
        masker(["mold"], [["mold"]], [0], init_images=[_init_image(), _init_image()])
    with pytest.raises(ValueError, match="multiples of 64"):
        AttentionMasker(pipes["sd1"], _config(height=100))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.4, "uncertainty_threshold": 0.5}, "uncertainty_threshold <= threshold"),
        ({"self_resolution": 1.5}, "self_resolution=1.5"),
        ({"self_resolution": 0}, "self_resolution=0"),
        ({"tau": -1}, "tau"),
        ({"step_window": (0.5, 0.5)}, "step_window"),
        ({"step_indices": (3, 2)}, "step_indices"),
        ({"softmax": "tokens"}, "softmax"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"height": -64}, "height"),
        ({"cross_resolution": ()}, "cross_resolution"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskerConfig(**kwargs)


def test_attention_figure(pipes, tmp_path):
    masker = AttentionMasker(pipes["sd1"], _config())
    (result,) = masker(["light mold on a wall"], [["light mold", "wall"]], [0])
    path = attention_figure(result, tmp_path / "fig.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] > png.size[1] > 100
    result.soft_maps = None
    with pytest.raises(ValueError, match="keep_soft_maps"):
        attention_figure(result, tmp_path / "none.png")
