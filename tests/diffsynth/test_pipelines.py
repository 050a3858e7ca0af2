"""Loading (tiny ids, local folders, existing pipelines), schedulers, sizes, seeds and image-to-image."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

from diffsynth.pipelines import (
    generators,
    img2img,
    load_pipeline,
    resolve_dtype,
    run_pipeline,
    set_scheduler,
    size_multiple,
    text2img,
    validate_size,
)
from diffsynth.testing import save_tiny_pipeline, tiny_pipeline


@pytest.fixture(scope="module")
def sd1():
    return load_pipeline("tiny", progress=False)


def test_tiny_ids_load_the_three_families():
    sd2 = load_pipeline("tiny-sd2", progress=False)
    assert isinstance(sd2, StableDiffusionPipeline) and sd2._progress_bar_config["disable"] is True
    assert load_pipeline("tiny-sd2")._progress_bar_config["disable"] is False  # tqdm over steps by default
    sdxl = load_pipeline("tiny-sdxl", progress=False)
    assert isinstance(sdxl, StableDiffusionXLPipeline)
    assert isinstance(img2img(sdxl), StableDiffusionXLImg2ImgPipeline) and img2img(sdxl).unet is sdxl.unet


def test_local_folder_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = save_tiny_pipeline(tmp_path / "sd", "sd1")
    pipe = load_pipeline(str(folder), torch_dtype="float32", scheduler="dpm++", progress=False)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    reference = tiny_pipeline("sd1")
    torch.testing.assert_close(pipe.unet.conv_in.weight, reference.unet.conv_in.weight)
    run = run_pipeline(pipe, ["mold"], [0], num_inference_steps=2)
    assert run.images[0].size == (128, 128)
    assert load_pipeline(str(folder), torch_dtype="bf16", progress=False).unet.dtype is torch.bfloat16


def test_unsupported_pipeline_folder_is_rejected(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="FluxPipeline"):
        load_pipeline(str(tmp_path))


def test_existing_pipelines_are_accepted_and_img2img_becomes_txt2img():
    pipe = load_pipeline(tiny_pipeline("sd1", img2img=True), progress=False)
    assert type(pipe) is StableDiffusionPipeline
    assert isinstance(img2img(pipe), StableDiffusionImg2ImgPipeline)
    assert text2img(pipe) is pipe and img2img(pipe) is img2img(pipe)  # built once, shared components
    with pytest.raises(TypeError, match="Hub id"):
        load_pipeline(42)


def test_dtype_aliases():
    assert resolve_dtype("fp16") is torch.float16 and resolve_dtype(torch_dtype="bf16") is torch.bfloat16
    assert resolve_dtype(torch.float32, torch_dtype="float32") is torch.float32
    with pytest.raises(ValueError, match="disagree"):
        resolve_dtype("fp16", "fp32")
    with pytest.raises(ValueError, match="int8"):
        resolve_dtype("int8")
    pipe = load_pipeline("tiny", dtype="bfloat16", progress=False)
    assert pipe.unet.dtype is torch.bfloat16


def test_scheduler_by_name(sd1):
    pipe = tiny_pipeline("sd1")
    betas = pipe.scheduler.config.beta_end
    set_scheduler(pipe, "euler")
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler) and pipe.scheduler.config.beta_end == betas
    set_scheduler(pipe, "DDIM")
    assert isinstance(pipe.scheduler, DDIMScheduler)
    with pytest.raises(ValueError, match=r"scheduler='magic'.*ddim"):
        set_scheduler(pipe, "magic")


def test_safety_checker_off_is_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="diffsynth.pipelines"):
        load_pipeline("tiny", progress=False)
    assert "safety checker is off" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffsynth.pipelines"):
        load_pipeline("tiny", safety_checker=True, progress=False)
    assert "safety checker is off" not in caplog.text


def test_size_must_be_a_multiple_of_vae_times_unet_downsampling(sd1):
    assert size_multiple(sd1) == 64 and size_multiple(tiny_pipeline("sdxl")) == 32
    validate_size(sd1, 128, 192)
    with pytest.raises(
        ValueError, match=r"height=120 and width=128 must be positive multiples of 64"
    ) as info:
        validate_size(sd1, 120, 128)
    assert "height=128" in str(info.value)  # suggests the nearest valid size
    with pytest.raises(ValueError, match="multiples of 64"):
        run_pipeline(sd1, ["mold"], [0], height=100, width=128, num_inference_steps=1)


def test_generators_are_per_sample_and_cpu():
    gens = generators([3, 4])
    assert [g.device.type for g in gens] == ["cpu", "cpu"]
    assert torch.equal(
        torch.randn(3, generator=gens[0]), torch.randn(3, generator=torch.Generator().manual_seed(3))
    )


def test_same_seed_same_image_and_batch_equals_singles(sd1):
    prompts, seeds = ["mold on a wall", "a broken pipe", "a stain"], [11, 12, 13]
    batch = run_pipeline(sd1, prompts, seeds, num_inference_steps=2).images
    again = run_pipeline(sd1, prompts[1:2], seeds[1:2], num_inference_steps=2).images[0]
    for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
        single = run_pipeline(sd1, [prompt], [seed], num_inference_steps=2).images[0]
        diff = np.abs(np.asarray(single, dtype=int) - np.asarray(batch[i], dtype=int))
        assert diff.max() <= 1, f"sample {i} differs between batch and single run"
    assert list(again.getdata()) == list(
        run_pipeline(sd1, prompts[1:2], [12], num_inference_steps=2).images[0].getdata()
    )
    different = run_pipeline(sd1, prompts[1:2], [99], num_inference_steps=2).images[0]
    assert list(different.getdata()) != list(again.getdata())


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_img2img_runs_int_steps_times_strength(kind):
    pipe = load_pipeline(f"tiny-{kind}" if kind != "sd1" else "tiny", progress=False)
    init = np.random.default_rng(0).random((96, 80, 3))  # float array, other size: resized to the target
    run = run_pipeline(pipe, ["mold"], [0], init_images=[init], strength=0.4, num_inference_steps=10)
    assert run.executed_steps == 4 and run.images[0].size == (128, 128)
    with pytest.raises(ValueError, match="one each"):
        run_pipeline(pipe, ["mold", "stain"], [0, 1], init_images=[init], num_inference_steps=10)
    with pytest.raises(ValueError, match="runs no denoising step"):
        run_pipeline(pipe, ["mold"], [0], init_images=[init], strength=0.05, num_inference_steps=10)
