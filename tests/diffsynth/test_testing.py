"""The offline test kit: tiny SD 1.x / 2.x / SDXL pipelines with the real CLIP tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from diffsynth.testing import KINDS, clip_tokenizer, save_tiny_pipeline, tiny_pipeline


def _run(pipe, **kwargs):
    generator = torch.Generator().manual_seed(0)
    return pipe(
        "a photo of a cat", num_inference_steps=2, generator=generator, output_type="np", **kwargs
    ).images


def test_clip_tokenizer_matches_openai_ids():
    tokenizer = clip_tokenizer()
    # Ids of openai/clip-vit-large-patch14 for these words (49406/49407 = start/end of text).
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408
    padded = tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == 49407
    assert clip_tokenizer(pad_token="!").pad_token_id == 0


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_pipeline_is_deterministic(kind):
    first, second = tiny_pipeline(kind), tiny_pipeline(kind)
    for (name, a), (_, b) in zip(first.unet.state_dict().items(), second.unet.state_dict().items()):
        assert torch.equal(a, b), name
    state = torch.random.get_rng_state()
    tiny_pipeline(kind)
    assert torch.equal(state, torch.random.get_rng_state()), "building must not disturb the global RNG"


@pytest.mark.parametrize("kind", KINDS)
def test_saved_folder_loads_and_runs(kind, tmp_path):
    reference = _run(tiny_pipeline(kind))
    save_tiny_pipeline(tmp_path / kind, kind)
    loaded = DiffusionPipeline.from_pretrained(tmp_path / kind)
    loaded.set_progress_bar_config(disable=True)
    images = _run(loaded)
    assert images.shape == (1, 128, 128, 3)
    np.testing.assert_allclose(images, reference, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_img2img_shares_components(kind):
    txt2img, img2img = tiny_pipeline(kind), tiny_pipeline(kind, img2img=True)
    assert "Img2Img" in type(img2img).__name__
    for (name, a), (_, b) in zip(txt2img.unet.state_dict().items(), img2img.unet.state_dict().items()):
        assert torch.equal(a, b), name
    init = Image.fromarray(np.full((128, 128, 3), 127, np.uint8))
    images = _run(img2img, image=init, strength=1.0)
    assert images.shape == (1, 128, 128, 3) and np.isfinite(images).all()


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="kind"):
        tiny_pipeline("sd4")  # type: ignore[arg-type]
