"""AttentionMasker and the loaders on SD3 and FLUX: tiny pipelines, folders, masks, batches, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from diffsynth import AttentionMasker, MaskerConfig, generate, settings_of
from diffsynth.dit_attention import DiTStore
from diffsynth.dit_masks import dit_pool, dit_soft_maps
from diffsynth.pipelines import load_pipeline, run_pipeline
from diffsynth.prompts import TokenSpan
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

    named = r"KandinskyPipeline cannot be captured.*StableDiffusion3Pipeline.*FluxPipeline"
    with pytest.raises(ValueError, match=named):
        load_pipeline(KandinskyPipeline())
    with pytest.raises(ValueError, match=named):
        AttentionMasker(KandinskyPipeline(), _config())
    with pytest.raises(ValueError, match=named):
        generate(["mold"], 1, KandinskyPipeline(), num_inference_steps=1, progress=False)


def test_an_img2img_pipeline_object_draws_both_modes(pipe):
    img2img_pipe = tiny_pipeline("flux" if "Flux" in type(pipe).__name__ else "sd3", img2img=True)
    masker = AttentionMasker(img2img_pipe, _config(num_inference_steps=4))
    (plain,) = AttentionMasker(pipe, _config(num_inference_steps=4))(PROMPTS[1:], CLASSES[1:], [0])
    (text,) = masker(PROMPTS[1:], CLASSES[1:], [0])
    assert text.metadata["mode"] == "txt2img" and text.metadata["steps_executed"] == 4
    np.testing.assert_array_equal(np.asarray(text.image), np.asarray(plain.image))  # same components
    init = np.full((128, 128, 3), 128, dtype=np.uint8)
    (image,) = masker(PROMPTS[1:], CLASSES[1:], [0], init_images=[init], strength=0.5)
    assert image.metadata["mode"] == "img2img" and image.metadata["steps_captured"] == [0, 1]
    assert (image.label_map == 0).any()


def test_prompt_limits_at_the_pipelines_default_sequence_lengths():
    """T5 limit = the default max_sequence_length (SD3 256, FLUX 512); SD3's CLIP limit is 77. FLUX's CLIP only
    feeds the pooled vector (its class columns are T5 positions), so FLUX accepts prompts over 77 CLIP tokens."""
    words = "a photo of mold on a wall "  # 7 CLIP and 7 T5 tokens
    sd3, flux = (AttentionMasker(tiny_pipeline(kind), _config()) for kind in ("sd3", "flux"))
    with pytest.raises(ValueError, match=r"prompt 'a photo of mold.*is 8[0-9] CLIP tokens.*limit of 77"):
        sd3.token_spans(words * 12, ["mold"])
    with pytest.raises(ValueError, match=r"prompt 'a photo of mold.*is 2[0-9][0-9] T5 tokens.*limit of 256"):
        sd3.token_spans(words * 40, ["mold"])
    assert flux.token_spans(words * 40, ["mold"])[0].positions[:2] == (3, 10)
    with pytest.raises(ValueError, match=r"prompt 'a photo of mold.*is [0-9]+ T5 tokens.*limit of 512"):
        flux.token_spans(words * 80, ["mold"])


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


def _hand_made_store(i2t: torch.Tensor, i2i: torch.Tensor, grid: tuple[int, int]) -> DiTStore:
    """A one-image store holding one captured call with the given ``[N, T]`` and ``[N, N]`` blocks."""
    store = DiTStore(1, grid, 1)
    store.begin_step(1, 0, text_len=i2t.shape[-1])
    sums = store.open("block", torch.device("cpu"))
    sums[0][0].copy_(i2t)
    sums[1][0].copy_(i2i)
    return store


@pytest.mark.parametrize("tau", [0, 1, 4])
def test_tau_and_renormalisation_on_hand_made_blocks(tau):
    """tau counts random-walk steps on the pooled grid (tau=0: the raw I2T class maps). Renormalised, the maps do
    not depend on how much of each image row's mass went to text keys; unrenormalised they do (when tau > 0)."""
    grid, spans = (4, 4), [[TokenSpan("a", ((0,),)), TokenSpan("b", ((1, 2),))]]
    torch.manual_seed(0)
    probs = (3 * torch.randn(16, 3 + 16)).softmax(dim=-1)  # image-query rows of a joint softmax [text, image]
    image_share = torch.rand(16, 1) + 0.2  # another model: rows attend more or less to text, same image shape
    stores = [
        _hand_made_store(probs[:, :3], probs[:, 3:], grid),
        _hand_made_store(probs[:, :3], probs[:, 3:] * image_share, grid),
    ]
    (renormalized, raw), (rescaled, _) = (dit_soft_maps(s, spans, (8, 8), tau, True) for s in stores)
    torch.testing.assert_close(renormalized[0], rescaled[0])
    if (
        tau == 0
    ):  # the refined maps keep the bicubic overshoot for labelling; the raw ones are clamped for display
        torch.testing.assert_close(renormalized[0].clamp(0, 1), raw[0])
    else:
        assert not torch.allclose(renormalized[0], raw[0], atol=1e-3)
        as_is = [dit_soft_maps(s, spans, (8, 8), tau, False)[0][0] for s in stores]
        assert not torch.allclose(as_is[0], as_is[1], atol=1e-3)


def test_sd3_without_t5_uses_the_clip_columns():
    """diffusers' low-memory SD3 (``text_encoder_3=None``) puts zeros at the T5 positions: CLIP spans only."""
    components = {**tiny_pipeline("sd3").components, "text_encoder_3": None, "tokenizer_3": None}
    pipe = StableDiffusion3Pipeline(**components)
    (result,) = AttentionMasker(pipe, _config())(PROMPTS[1:], CLASSES[1:], [0])
    assert result.metadata["token_spans"] == [{"name": "pipe", "positions": [3]}]  # <start> a dark pipe
    assert (result.label_map == 0).any()
