"""Capture bookkeeping on the tiny pipelines: layers, resolutions, shapes, counts, CFG halves, restoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from PIL import Image

from diffsynth.attention import (
    AttentionStore,
    CaptureProcessor,
    _accumulate_probs,
    attention_layers,
    available_resolutions,
    capture_attention,
    grid_size,
)
from diffsynth.pipelines import generators, img2img, run_pipeline
from diffsynth.testing import tiny_pipeline


@pytest.fixture(scope="module")
def pipes():
    return {kind: tiny_pipeline(kind) for kind in ("sd1", "sd2", "sdxl")}


def _processor_types(unet):
    return {name: type(p) for name, p in unet.attn_processors.items()}


# -- structure ----------------------------------------------------------------------------------------
def test_layer_factors_match_the_unet_structure(pipes):
    sd1 = {(layer.block, layer.kind): layer.factor for layer in attention_layers(pipes["sd1"].unet)}
    assert sd1[("down_blocks.0", "self")] == 1 and sd1[("down_blocks.1", "cross")] == 2
    assert sd1[("down_blocks.2", "self")] == 4 and sd1[("mid_block", "cross")] == 8
    assert sd1[("up_blocks.1", "self")] == 4 and sd1[("up_blocks.3", "cross")] == 1
    assert available_resolutions(pipes["sd1"].unet) == {"self": [1, 2, 4, 8], "cross": [1, 2, 4, 8]}
    # SDXL: no attention at latent/1; mid block and up_blocks.0 share the coarsest level.
    assert available_resolutions(pipes["sdxl"].unet) == {"self": [2, 4], "cross": [2, 4]}
    assert len(attention_layers(pipes["sdxl"].unet)) == len(pipes["sdxl"].unet.attn_processors)


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_structural_factors_match_real_sequence_lengths_on_a_non_square_latent(pipes, kind):
    # Independent check: record every layer's query length on a 16x24 latent and compare with the grid.
    unet = pipes[kind].unet
    seen: dict[str, int] = {}
    handles = []
    for layer in attention_layers(unet):
        module = unet.get_submodule(layer.name)
        handles.append(
            module.register_forward_pre_hook(
                lambda m, a, kw, name=layer.name: seen.__setitem__(
                    name, (a[0] if a else kw["hidden_states"]).shape[1]
                ),
                with_kwargs=True,
            )
        )
    try:
        pipes[kind](
            "a photo",
            height=128,
            width=192,
            num_inference_steps=1,
            generator=generators([0]),
            output_type="latent",
        )
    finally:
        for h in handles:
            h.remove()
    for layer in attention_layers(unet):
        gh, gw = grid_size((16, 24), layer.factor)
        assert seen[layer.name] == gh * gw, layer


# -- probabilities -----------------------------------------------------------------------------------
def test_accumulate_probs_matches_softmax_reference_with_chunks_and_column_masks():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 10, 4, generator=g)
    k = torch.randn(2, 3, 7, 4, generator=g)
    reference = torch.softmax(q @ k.transpose(-1, -2) * 0.5, dim=-1).mean(dim=1)
    for chunk in (1, 2 * 3 * 7 * 4 * 3, 1 << 30):  # one row at a time, 3 rows, everything
        total = torch.zeros(2, 10, 7)
        _accumulate_probs(total, q, k, 0.5, None, None, chunk)
        torch.testing.assert_close(total, reference)
    columns = torch.zeros(2, 7, dtype=torch.bool)
    columns[:, [2, 5]] = True
    total = torch.zeros(2, 10, 7)
    _accumulate_probs(total, q, k, 0.5, columns, None, 64)
    sub = torch.softmax((q @ k.transpose(-1, -2) * 0.5)[..., [2, 5]], dim=-1).mean(dim=1)
    torch.testing.assert_close(total[..., [2, 5]], sub)
    assert (total[..., [0, 1, 3, 4, 6]] == 0).all()


# -- capture on real runs ----------------------------------------------------------------------------
def _store(pipe, batch=1, size=(128, 128), **kwargs):
    latent = (size[0] // pipe.vae_scale_factor, size[1] // pipe.vae_scale_factor)
    kwargs.setdefault("self_factor", 2)
    kwargs.setdefault("cross_factors", (4,))
    return AttentionStore(batch, latent, **kwargs)


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_only_chosen_layers_are_captured_and_processors_come_back(pipes, kind):
    pipe = pipes[kind]
    before = dict(pipe.unet.attn_processors)
    store = _store(pipe)
    inside = {}

    def spy(p, i, t, kw):
        inside.update(_processor_types(p.unet))
        return kw

    with capture_attention(pipe.unet, store, lambda: pipe.num_timesteps) as chosen:
        pipe(
            "mold",
            num_inference_steps=3,
            generator=generators([0]),
            callback_on_step_end=spy,
            output_type="latent",
        )
    chosen_names = {layer.name + ".processor" for layer in chosen}
    expected = {
        layer.name + ".processor"
        for layer in attention_layers(pipe.unet)
        if (layer.kind, layer.factor) in {("self", 2), ("cross", 4)}
    }
    assert chosen_names == expected and expected
    assert {n for n, t in inside.items() if t is CaptureProcessor} == expected
    assert all(t is AttnProcessor2_0 for n, t in inside.items() if n not in expected)
    after = pipe.unet.attn_processors
    assert all(after[name] is before[name] for name in before)

    # Bookkeeping: 3 steps x layers; rows are probability distributions.
    n_self = sum(1 for layer in chosen if layer.kind == "self")
    n_cross = len(chosen) - n_self
    assert store.executed_steps == 3 and store.captured_steps == [0, 1, 2]
    assert store.count("self", 2) == 3 * n_self and store.count("cross", 4) == 3 * n_cross
    self_mean, cross_mean = store.mean("self", 2), store.mean("cross", 4)
    assert self_mean.shape == (1, 64, 64) and cross_mean.shape == (1, 16, 77)
    assert self_mean.dtype == torch.float32
    torch.testing.assert_close(self_mean.sum(-1), torch.ones(1, 64))
    torch.testing.assert_close(cross_mean.sum(-1), torch.ones(1, 16))
    assert store.nbytes() == 4 * (64 * 64 + 16 * 77)


def test_processors_restored_after_an_exception_mid_run(pipes):
    pipe = pipes["sd1"]
    custom = AttnProcessor()  # a user's processor on every layer must come back, by identity
    pipe.unet.set_attn_processor(custom)
    try:
        store = _store(pipe)

        def boom(p, i, t, kw):
            if i == 1:
                raise RuntimeError("stop mid-run")
            return kw

        with (
            pytest.raises(RuntimeError, match="stop mid-run"),
            capture_attention(pipe.unet, store, lambda: pipe.num_timesteps),
        ):
            pipe("mold", num_inference_steps=4, generator=generators([0]), callback_on_step_end=boom)
        assert all(p is custom for p in pipe.unet.attn_processors.values())
        assert store.executed_steps == 2
        assert not pipe.unet._forward_pre_hooks, "the step hook must be removed"
    finally:
        pipe.unet.set_attn_processor(AttnProcessor2_0())


def test_capture_does_not_change_the_image(pipes):
    pipe = pipes["sd2"]
    plain = run_pipeline(pipe, ["a wall with mold"], [5], num_inference_steps=3, progress=False).images[0]
    captured = run_pipeline(
        pipe, ["a wall with mold"], [5], num_inference_steps=3, store=_store(pipe), progress=False
    ).images[0]
    assert list(plain.getdata()) == list(captured.getdata())


def test_img2img_captures_only_executed_steps(pipes):
    pipe = pipes["sd1"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    store = _store(pipe)
    run = run_pipeline(
        pipe, ["mold"], [0], init_images=[image], strength=0.4, num_inference_steps=10, store=store
    )
    assert run.executed_steps == store.executed_steps == int(10 * 0.4)
    n_self = sum(1 for layer in attention_layers(pipe.unet) if (layer.kind, layer.factor) == ("self", 2))
    assert store.count("self", 2) == 4 * n_self
    assert store.timesteps[0] < 500  # the low-noise end of the schedule
    assert img2img(pipe).unet is pipe.unet


def test_step_window_fractions_and_indices():
    store = AttentionStore(1, (16, 16), 2, (4,), step_window=(0.5, 1.0))
    for _ in range(5):
        store.begin_step(5)
    assert store.captured_steps == [2, 3, 4]  # floor(0.5*5)=2 .. ceil(1.0*5)=5
    store = AttentionStore(1, (16, 16), 2, (4,), step_window=(0.0, 0.25))
    for _ in range(10):
        store.begin_step(10)
    assert store.captured_steps == [0, 1, 2]
    store = AttentionStore(1, (16, 16), 2, (4,), step_indices=(1, 3))
    for _ in range(10):
        store.begin_step(10)
    assert store.captured_steps == [1, 2]
    with pytest.raises(ValueError, match="step_window"):
        AttentionStore(1, (16, 16), 2, (4,), step_window=(0.6, 0.5))


def test_store_skips_work_outside_the_window(pipes):
    pipe = pipes["sd1"]
    store = _store(pipe, step_indices=(2, None))
    with capture_attention(pipe.unet, store, lambda: pipe.num_timesteps):
        pipe("mold", num_inference_steps=3, generator=generators([0]), output_type="latent")
    n_self = sum(1 for layer in attention_layers(pipe.unet) if (layer.kind, layer.factor) == ("self", 2))
    assert store.captured_steps == [2] and store.count("self", 2) == n_self


def _first_step_maps(pipe, prompt, guidance, negative=None, batch_prompts=None):
    prompts = batch_prompts or [prompt]
    store = _store(pipe, batch=len(prompts), step_indices=(0, 1))
    run_pipeline(
        pipe,
        prompts,
        list(range(7, 7 + len(prompts))),
        num_inference_steps=2,
        guidance_scale=guidance,
        negative_prompt=negative,
        store=store,
        progress=False,
    )
    return store.mean("self", 2), store.mean("cross", 4)


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_maps_come_from_the_conditional_half(pipes, kind):
    # At step 0 the latents are the seed's noise whatever the guidance, so the conditional half of a CFG
    # run sees exactly what a guidance-1 run (no CFG, one half) sees.
    pipe = pipes[kind]
    cfg_self, cfg_cross = _first_step_maps(pipe, "light mold on a wall", 7.5, negative="blurry")
    cond_self, cond_cross = _first_step_maps(pipe, "light mold on a wall", 1.0)
    torch.testing.assert_close(cfg_self, cond_self, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cfg_cross, cond_cross, rtol=1e-4, atol=1e-5)
    # ...and not what the unconditional half (the negative prompt) sees.
    uncond_self, uncond_cross = _first_step_maps(pipe, "blurry", 1.0)
    assert not torch.allclose(cfg_cross, uncond_cross, atol=1e-4)
    assert not torch.allclose(cfg_self, uncond_self, atol=1e-5)


def test_cfg_halves_with_a_batch(pipes):
    # Batch [p0, p1] under CFG: image i's maps equal its own single guidance-1 run.
    pipe = pipes["sd1"]
    prompts = ["light mold on a wall", "a broken pipe"]
    batch_self, batch_cross = _first_step_maps(pipe, None, 7.5, batch_prompts=prompts)
    for i, prompt in enumerate(prompts):
        store = _store(pipe, step_indices=(0, 1))
        run_pipeline(
            pipe, [prompt], [7 + i], num_inference_steps=2, guidance_scale=1.0, store=store, progress=False
        )
        torch.testing.assert_close(batch_cross[i], store.mean("cross", 4)[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batch_self[i], store.mean("self", 2)[0], rtol=1e-4, atol=1e-5)


def test_wrong_batch_is_a_clear_error(pipes):
    pipe = pipes["sd1"]
    store = _store(pipe, batch=3)
    with (
        pytest.raises(RuntimeError, match="neither 3 nor 6"),
        capture_attention(pipe.unet, store, lambda: pipe.num_timesteps),
    ):
        pipe("mold", num_inference_steps=1, generator=generators([0]), output_type="latent")


def test_missing_resolution_lists_what_exists(pipes):
    store = _store(pipes["sdxl"], self_factor=1)
    with (
        pytest.raises(ValueError, match=r"no self-attention at latent/1.*\[2, 4\]"),
        capture_attention(pipes["sdxl"].unet, store),
    ):
        pass
    assert all(type(p) is AttnProcessor2_0 for p in pipes["sdxl"].unet.attn_processors.values())
