"""Dataset Diffusion fidelity: the named preset and the unclamped cross-map resize."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffsynth import dataset_diffusion as dd
from diffsynth.attention import AttentionStore
from diffsynth.masker import AttentionMasker, MaskerConfig
from diffsynth.masks import label, normalize, upsample
from diffsynth.prompts import TokenSpan
from diffsynth.testing import tiny_pipeline


def test_preset_is_dataset_diffusions_recipe():
    config = MaskerConfig.dataset_diffusion()
    assert config.num_inference_steps == 100 and config.guidance_scale == 7.5
    assert config.class_prompt and config.append_class_names and config.class_separator == " "
    assert config.negative_prompt.startswith("ugly, tiling, poorly drawn hands")
    assert "poorly drawn face,out of frame" in config.negative_prompt  # DD joins its pieces without spaces
    assert "bad anatomy,watermark" in config.negative_prompt and config.negative_prompt.endswith(
        "distorted face"
    )
    assert (config.self_resolution, config.cross_resolution, config.tau) == (0.5, (0.25,), 4)
    assert (config.threshold, config.uncertainty_threshold, config.softmax) == (0.6, 0.5, "full")
    assert config.step_window == (0.0, 1.0) and config.step_indices is None
    assert MaskerConfig.dataset_diffusion(num_inference_steps=3, height=64).num_inference_steps == 3
    # the plain defaults are not the recipe (documented in the docstring)
    plain = MaskerConfig()
    assert (plain.num_inference_steps, plain.negative_prompt, plain.class_prompt) == (50, None, False)
    assert config.negative_prompt == dd.NEGATIVE_PROMPT


def test_upsample_can_keep_the_bicubic_overshoot():
    step = torch.zeros(1, 4, 4)
    step[:, :, 2:] = 1.0
    raw = F.interpolate(step[None], size=(16, 24), mode="bicubic", align_corners=False)[0]
    torch.testing.assert_close(upsample(step, (16, 24), clamp=False), raw, rtol=0, atol=0)
    assert upsample(step, (16, 24)).min() >= 0  # the default still clamps (stored soft maps)


@pytest.fixture(scope="module")
def masker():
    config = MaskerConfig(self_resolution=0.5, cross_resolution=0.25, tau=0, progress=False)
    return AttentionMasker(tiny_pipeline("sd1"), config)


def test_cross_maps_are_resized_without_clamp(masker):
    """A sharp 4x4 cross map resized to the 8x8 self grid undershoots below 0 next to its peak; Dataset
    Diffusion normalises from that undershoot, so a clamp there shifts every value of the refined map."""
    assert masker.resolutions()["self"] == [8, 8] and masker.resolutions()["cross"] == [[4, 4]]
    store = AttentionStore(1, masker.latent_size, masker.self_factor, masker.cross_factors)
    cross = torch.zeros(4, 4)
    cross[1, 1] = 0.9  # class token column: one bright cell
    cross[1, 2] = 0.3
    store.open("self", masker.self_factor, "self", 64, torch.device("cpu"))[0] += torch.eye(64)
    store.open("cross", masker.cross_factors[0], "cross", 77, torch.device("cpu"))[0, :, 1] += cross.reshape(
        -1
    )
    soft, _ = masker.soft_maps(store, [[TokenSpan("cat", ((1,),))]])
    on_grid = F.interpolate(cross[None, None], size=(8, 8), mode="bicubic", align_corners=False)[0]
    assert on_grid.min() < -0.01, "test needs undershoot"
    # tau = 0 and A_S = I: refined = normalised cross
    expected = upsample(normalize(on_grid), masker.size, clamp=False)
    torch.testing.assert_close(soft[0], expected, rtol=0, atol=1e-6)
    clamped = upsample(normalize(on_grid.clamp(0, 1)), masker.size, clamp=False)
    assert (soft[0] - clamped).abs().max() > 0.01  # what the clamp used to give


def _two_overshooting_classes() -> torch.Tensor:
    """Two class maps ``[8, 8, 2]`` at 1 on the left half: the first steps down to 0.5 then 0, the second
    straight to 0, so bicubic overshoots past 1 inside both plateaus, more for the second."""
    maps = torch.zeros(8, 8, 2)
    maps[:, :4] = 1.0
    maps[:, 4, 0] = 0.5
    return maps


def _dd_labels(maps: torch.Tensor) -> torch.Tensor:
    """Dataset Diffusion's labels of ``[K, H, W]`` maps, in local ids (class k -> k, background K, 255)."""
    best, index = maps.max(dim=0)
    labels = torch.where(best >= 0.6, index, maps.shape[0])
    labels[(best < 0.6) & (best >= 0.5)] = 255
    return labels


def test_labels_are_the_argmax_of_the_unclamped_maps(masker, monkeypatch):
    """Where two classes both overshoot past 1 after the final bicubic resize, Dataset Diffusion labels the
    larger; clamped first, both would be 1 and the argmax would pick the first class."""
    same_grid = AttentionMasker(
        masker.pipe, MaskerConfig(cross_resolution=0.5, tau=0, num_inference_steps=1, progress=False)
    )
    store = AttentionStore(1, same_grid.latent_size, same_grid.self_factor, same_grid.cross_factors)
    store.open("self", same_grid.self_factor, "self", 64, torch.device("cpu"))[0] += torch.eye(64)
    columns = store.open("cross", same_grid.cross_factors[0], "cross", 77, torch.device("cpu"))
    columns[0, :, 1:3] += _two_overshooting_classes().reshape(64, 2)
    spans = [[TokenSpan("cat", ((1,),)), TokenSpan("dog", ((2,),))]]
    soft, _ = same_grid.soft_maps(store, spans)
    raw = F.interpolate(_two_overshooting_classes().permute(2, 0, 1)[None], same_grid.size, mode="bicubic")[0]
    both_over = (raw > 1).all(dim=0) & (raw[1] > raw[0])
    assert both_over.sum() > 100, "test needs pixels where both classes overshoot, the second more"
    expected = _dd_labels(raw)
    assert (expected[both_over] == 1).all() and (_dd_labels(raw.clamp(0, 1))[both_over] == 0).all()
    assert (torch.from_numpy(label(soft[0]).astype(int)) == expected).all()
    torch.testing.assert_close(soft[0], raw, rtol=0, atol=1e-6)

    # the masker labels before it clamps what it stores
    monkeypatch.setattr(same_grid, "soft_maps", lambda store, spans: ([raw], [raw.clamp(0, 1)]))
    (result,) = same_grid(["a cat and a dog"], [["cat", "dog"]], [0])
    assert (torch.from_numpy(result.label_map.astype(int)) == expected).all()
    assert result.soft_maps.min() >= 0 and result.soft_maps.max() <= 1
