"""AttentionMasker and the loaders on SD3 and FLUX: tiny pipelines, folders, masks, batches, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsynth import AttentionMasker, MaskerConfig, generate, settings_of
from diffsynth.dit_masks import dit_pool
from diffsynth.pipelines import load_pipeline, run_pipeline
from diffsynth.testing import tiny_pipeline
from diffsynth.testing_dit import tiny_dit_pipeline

PROMPTS = ["a photo of mold on a wall, light stain", "a dark pipe in the room"]
CLASSES = [["mold", "stain"], ["pipe"]]


def _config(**kwargs):
    base = dict(num_inference_steps=2, height=128, width=128, guidance_scale=3.5, progress=False)
    return MaskerConfig(**{**base, **kwargs})


@pytest.fixture(scope="module", params=["sd3", "flux"])
def pipe(request):
    return tiny_pipeline(request.param)


def test_masks_are_non_empty(pipe):
    results = AttentionMasker(pipe, _config(dit_single_blocks=(0.5, 1.0)))(PROMPTS, CLASSES, [0, 1])
    for result, classes in zip(results, CLASSES):
        assert result.label_map.shape == (128, 128) and result.soft_maps.shape == (len(classes), 128, 128)
        for k in range(len(classes)):
            assert (result.label_map == k).any(), (result.prompt, classes[k])
        assert result.metadata["resolutions"] == {"tokens": [8, 8], "self": [8, 8], "cross": [[8, 8]]}
        assert result.metadata["steps_captured"] == [0, 1]


def test_batch_equals_single_runs(pipe):
    masker = AttentionMasker(pipe, _config())
    batch = masker(PROMPTS, CLASSES, [5, 6])
    for i in range(2):
        (single,) = masker([PROMPTS[i]], [CLASSES[i]], [5 + i])
        # Batched matmuls round differently from single ones: pixels may move by one level, no more.
        diff = np.abs(np.asarray(batch[i].image, np.int16) - np.asarray(single.image, np.int16))
        assert diff.max() <= 1
        assert single.soft_maps.max() == 1.0
        # tau=4 random-walk steps amplify the float noise of batched matmuls a little (seen: 1.05e-3).
        np.testing.assert_allclose(batch[i].soft_maps, single.soft_maps, atol=3e-3)
        np.testing.assert_allclose(batch[i].cross_maps, single.cross_maps, atol=1e-4)
        assert batch[i].metadata["token_spans"] == single.metadata["token_spans"]


def test_img2img(pipe):
    init = np.full((128, 128, 3), 128, dtype=np.uint8)
    (result,) = AttentionMasker(pipe, _config(num_inference_steps=4))(
        PROMPTS[:1], CLASSES[:1], [0], init_images=[init], strength=0.5
    )
    assert result.metadata["mode"] == "img2img" and result.metadata["steps_executed"] == 2


def test_folder_and_pipeline_object_load(tmp_path):
    folder = tmp_path / "flux"
    tiny_dit_pipeline("flux", img2img=True).save_pretrained(folder)
    pipe = load_pipeline(str(folder), progress=False)
    assert type(pipe).__name__ == "FluxPipeline"  # an img2img folder loads as its text-to-image sibling
    assert type(load_pipeline(tiny_pipeline("sd3", img2img=True))).__name__ == "StableDiffusion3Pipeline"
    (result,) = AttentionMasker(str(folder), _config())(PROMPTS[1:], CLASSES[1:], [0])
    assert (result.label_map == 0).any()


def test_schnell_like_flux_without_guidance_embedding():
    pipe = tiny_dit_pipeline("flux", guidance=False)
    (result,) = AttentionMasker(pipe, _config())(PROMPTS[1:], CLASSES[1:], [0])
    assert result.soft_maps.max() > 0


def test_unsupported_pipeline_class_is_named():
    class KandinskyPipeline:
        components = None

    with pytest.raises(ValueError, match=r"KandinskyPipeline cannot be captured.*FluxPipeline"):
        load_pipeline(KandinskyPipeline())


def test_unsupported_settings_are_refused():
    flux = tiny_pipeline("flux")
    with pytest.raises(ValueError, match="class_prompt"):
        AttentionMasker(flux, _config(class_prompt=True))
    with pytest.raises(ValueError, match="negative_prompt is not supported with FLUX"):
        run_pipeline(flux, ["a"], [0], num_inference_steps=1, height=128, width=128, negative_prompt="blurry")
    with pytest.raises(ValueError, match="multiples of 16"):
        AttentionMasker(flux, _config(height=120))


def test_config_validation_and_pooling():
    with pytest.raises(ValueError, match="dit_joint_blocks"):
        MaskerConfig(dit_joint_blocks=(0.5, 0.5))
    with pytest.raises(ValueError, match="both None"):
        MaskerConfig(dit_joint_blocks=None)
    with pytest.raises(ValueError, match="dit_grid"):
        MaskerConfig(dit_grid=0)
    with pytest.raises(ValueError, match="max_sequence_length"):
        MaskerConfig(max_sequence_length=1000)
    assert dit_pool((64, 64), 32) == 2 and dit_pool((8, 8), 32) == 1 and dit_pool((64, 96), 32) == 2
    with pytest.raises(ValueError, match="does not split"):
        dit_pool((64, 65), 32)


def test_extra_memory_is_the_pooled_sums():
    pipe = tiny_pipeline("flux")
    masker = AttentionMasker(pipe, _config(dit_grid=4))  # 8x8 tokens pooled to 4x4
    torch.manual_seed(0)
    (result,) = masker(PROMPTS[1:], CLASSES[1:], [0])
    assert result.metadata["resolutions"]["self"] == [4, 4]


def test_generate_accepts_a_dit_model():
    options = dict(num_inference_steps=2, height=128, width=128, guidance_scale=3.5, progress=False)
    dataset = generate(["mold", "stain"], 1, "tiny-flux", **options)
    assert len(dataset) == 1
    settings = settings_of(dataset)
    assert settings["pipeline"] == "FluxPipeline"
    assert settings["dit"]["max_sequence_length"] == 512 and settings["dit"]["renormalize"] is True
    with pytest.raises(ValueError, match=r"prompt '.*' is .* T5 tokens, over the text encoder's limit of 4"):
        generate(["mold"], 1, "tiny-flux", max_sequence_length=4, **options)
