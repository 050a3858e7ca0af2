"""Joint-attention capture for SD3 / FLUX: block split, pooling and renormalisation on hand-made tensors; the
captured probabilities are the model's own softmax; a captured run draws the plain run's pixels."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.normalization import RMSNorm

from diffsynth.dit_attention import (
    DiTStore,
    JointCaptureProcessor,
    accumulate_joint,
    capture_dit_attention,
    dit_layers,
    pool_columns,
    pool_rows,
    project,
    renormalize_rows,
    sliceable,
    split_joint,
    window_indices,
)
from diffsynth.pipelines import run_pipeline
from diffsynth.testing import tiny_pipeline


@pytest.fixture(scope="module", params=["sd3", "flux"])
def pipe(request):
    return tiny_pipeline(request.param)


def test_split_joint_follows_the_sequence_order():
    probs = torch.arange(10.0).reshape(1, 1, 10)  # 3 text + 7 image columns
    text, image = split_joint(probs, 3, text_first=True)  # FLUX: [text, image]
    assert text.flatten().tolist() == [0, 1, 2] and image.flatten().tolist() == [3, 4, 5, 6, 7, 8, 9]
    text, image = split_joint(probs, 3, text_first=False)  # SD3: [image, text]
    assert text.flatten().tolist() == [7, 8, 9] and image.flatten().tolist() == list(range(7))


def test_pooling_keeps_row_mass_and_averages_cells():
    # 4x4 token grid pooled 2x2: rows averaged over each cell, image columns summed over each cell.
    rows = torch.arange(16.0).reshape(1, 16, 1)
    pooled = pool_rows(rows, width=4, pool=2).flatten().tolist()
    assert pooled == [
        (0 + 1 + 4 + 5) / 4,
        (2 + 3 + 6 + 7) / 4,
        (8 + 9 + 12 + 13) / 4,
        (10 + 11 + 14 + 15) / 4,
    ]
    block = torch.softmax(torch.randn(2, 16, 16), dim=-1)
    summed = pool_columns(pool_rows(block, 4, 2), (4, 4), 2)
    assert summed.shape == (2, 4, 4)
    torch.testing.assert_close(summed.sum(-1), torch.ones(2, 4))
    assert torch.equal(pool_rows(block, 4, 1), block) and torch.equal(pool_columns(block, (4, 4), 1), block)


@pytest.mark.parametrize(("grid", "pool"), [((4, 6), 2), ((6, 9), 3)])
def test_pooling_equals_average_pooling_of_the_grid(grid, pool):
    """Against torch's avg_pool2d: rows pooled over query cells, columns (summed) over key cells."""
    torch.manual_seed(0)
    h, w = grid
    block = torch.rand(2, h * w, h * w)
    by_rows = torch.nn.functional.avg_pool2d(block.transpose(1, 2).reshape(2 * h * w, 1, h, w), pool)
    expected_rows = by_rows.reshape(2, h * w, -1).transpose(1, 2)
    torch.testing.assert_close(pool_rows(block, w, pool), expected_rows)
    by_columns = torch.nn.functional.avg_pool2d(block.reshape(2 * h * w, 1, h, w), pool) * pool**2
    torch.testing.assert_close(pool_columns(block, grid, pool), by_columns.reshape(2, h * w, -1))


def test_renormalize_rows_removes_the_text_share():
    block = torch.tensor([[0.2, 0.2], [0.45, 0.45]])  # rows keep 40% / 90% of their mass on image keys
    torch.testing.assert_close(renormalize_rows(block), torch.full((2, 2), 0.5))
    assert torch.equal(renormalize_rows(torch.zeros(1, 3)), torch.zeros(1, 3))


@pytest.mark.parametrize("text_first", [True, False])
@pytest.mark.parametrize("chunk_bytes", [1, 20_000, 2**20])  # one head and band / all heads, 2 bands / all
@pytest.mark.parametrize("mask_rows", [None, 1, "all", "per_head"])
def test_accumulate_joint_equals_the_dense_softmax(text_first, chunk_bytes, mask_rows):
    """Also from strided views of ``[B, S, H, d]`` projections (as the processor passes them) and with an
    additive attention mask, per query row (and per head) or broadcast over the rows."""
    torch.manual_seed(0)
    b, heads, d, text, grid, pool = 2, 3, 4, 5, (4, 6), 2
    n = grid[0] * grid[1]
    query = torch.randn(b, n, heads, d).transpose(1, 2)
    key = torch.randn(b, text + n, heads, d).transpose(1, 2)
    mask_shape = {1: (b, 1, 1), "all": (b, 1, n), "per_head": (b, heads, n)}.get(mask_rows)
    mask = None if mask_shape is None else torch.randn(*mask_shape, text + n)
    logits = query @ key.transpose(-1, -2) * 0.5
    probs = torch.softmax(logits if mask is None else logits + mask, dim=-1).mean(1)
    i2t_ref, i2i_ref = split_joint(probs, text, text_first)
    np_ = (grid[0] // pool) * (grid[1] // pool)
    sums = (torch.zeros(b, np_, text), torch.zeros(b, np_, np_))
    accumulate_joint(sums, query, key, 0.5, text, text_first, grid, pool, chunk_bytes, mask)
    torch.testing.assert_close(sums[0], pool_rows(i2t_ref, grid[1], pool))
    torch.testing.assert_close(sums[1], pool_columns(pool_rows(i2i_ref, grid[1], pool), grid, pool))
    torch.testing.assert_close(sums[0].sum(-1) + sums[1].sum(-1), torch.ones(b, np_))


def test_accumulate_joint_takes_a_boolean_mask_as_sdpa_does():
    """True = the key takes part (F.scaled_dot_product_attention's convention), not an additive 0/1."""
    torch.manual_seed(1)
    b, heads, d, text, grid, pool = 1, 2, 4, 3, (2, 4), 2
    n = grid[0] * grid[1]
    query, key = torch.randn(b, heads, n, d), torch.randn(b, heads, text + n, d)
    keep = torch.ones(b, 1, 1, text + n, dtype=torch.bool)
    keep[..., 1] = False  # one padded text token
    identity = torch.eye(text + n).expand(b, heads, -1, -1)  # SDPA's output rows = its probabilities
    probs = F.scaled_dot_product_attention(query, key, identity, attn_mask=keep, scale=0.5).mean(1)
    i2t_ref, i2i_ref = split_joint(probs, text, True)
    np_ = (grid[0] // pool) * (grid[1] // pool)
    sums = (torch.zeros(b, np_, text), torch.zeros(b, np_, np_))
    accumulate_joint(sums, query, key, 0.5, text, True, grid, pool, 2**20, keep)
    torch.testing.assert_close(sums[0], pool_rows(i2t_ref, grid[1], pool))
    torch.testing.assert_close(sums[1], pool_columns(pool_rows(i2i_ref, grid[1], pool), grid, pool))
    assert torch.all(sums[0][..., 1] == 0)


def test_window_indices():
    assert window_indices(19, (0.5, 1.0)) == list(range(9, 19))
    assert window_indices(2, (0.5, 1.0)) == [1]
    assert window_indices(4, (0.0, 0.1)) == [0]
    assert window_indices(3, None) == [] and window_indices(0, (0.0, 1.0)) == []


def test_layers_of_both_families(pipe):
    layers = dit_layers(pipe.transformer)
    assert [layer.stream for layer in layers].count("joint") == 2
    flux = "Flux" in type(pipe).__name__
    assert [layer.stream for layer in layers].count("single") == (2 if flux else 0)
    assert all(layer.text_first == flux for layer in layers)


class _Spy:
    """Wraps a processor and records the (query, key) its SDPA call gets."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, attn, *args, **kwargs):
        original = torch.nn.functional.scaled_dot_product_attention

        def spy(query, key, value, *a, **k):
            self.calls.append((query.detach().clone(), key.detach().clone()))
            return original(query, key, value, *a, **k)

        with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", spy):
            return self.inner(attn, *args, **kwargs)


def _reference_probs(query, key, text_len, text_first):
    """Head-averaged joint softmax of the image-query rows, as the block computed it."""
    probs = torch.softmax(
        query.float() @ key.float().transpose(-1, -2) / query.shape[-1] ** 0.5, dim=-1
    ).mean(1)
    n = probs.shape[-1] - text_len
    rows = probs[:, text_len:] if text_first else probs[:, :n]
    return split_joint(rows, text_len, text_first)


class _LowRank(torch.nn.Module):
    """A LoRA-like projection: its output is more than its weight's, so it cannot be sliced by heads."""

    def __init__(self, base: torch.nn.Linear) -> None:
        super().__init__()
        self.base = base
        generator = torch.Generator().manual_seed(0)
        self.down = torch.randn(base.in_features, 2, generator=generator)
        self.up = torch.randn(2, base.out_features, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.down @ self.up


class _Detached(torch.nn.Module):
    """Runs ``base``'s forward, but is another module: the capture's hooks on ``base`` do not see the call."""

    def __init__(self, base: torch.nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.forward(x)


class _Unhooked:
    """Runs the wrapped processor with ``to_k`` and ``norm_k`` swapped for :class:`_Detached` copies, so that the
    capture does not get the block's keys from its hooks and must project q and k on its own."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, attn, *args, **kwargs):
        to_k, norm_k = attn.to_k, attn.norm_k
        attn.to_k, attn.norm_k = _Detached(to_k), _Detached(norm_k) if norm_k is not None else None
        try:
            return self.inner(attn, *args, **kwargs)
        finally:
            attn.to_k, attn.norm_k = to_k, norm_k


def _add_qk_norms(attn) -> None:
    """SD3.5's RMS q/k norms (random scales) on a block that has none: SD3's processor applies them to
    ``[B, H, S, d]`` (after its transpose), FLUX's to ``[B, S, H, d]``."""
    generator = torch.Generator().manual_seed(1)
    for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
        norm = RMSNorm(attn.head_dim if hasattr(attn, "head_dim") else attn.inner_dim // attn.heads, eps=1e-6)
        norm.weight.data = torch.rand(norm.weight.shape, generator=generator) + 0.5
        setattr(attn, name, norm)


@pytest.mark.parametrize("source", ["block", "own"])
@pytest.mark.parametrize("variant", ["all_heads", "head_by_head", "lora_like", "qk_norm"])
@pytest.mark.parametrize("block", ["joint", "single"])
def test_captured_probabilities_are_the_models_softmax(pipe, block, variant, source):
    """From the block's own q / k tensors (no projection of the capture's own) and, when the wrapped processor
    does not call the hooked modules, from projections of its own; also one head at a time (a tiny chunk
    budget), with a LoRA-like query projection (the capture then projects all heads at once), and with q/k norms
    on SD3 (SD3.5; FLUX has them anyway), one head at a time."""
    flux = "Flux" in type(pipe).__name__
    if block == "single" and not flux:
        pytest.skip("SD3 has no single-stream blocks")
    if variant == "qk_norm" and flux:
        pytest.skip("FLUX's blocks have q/k norms in every variant")
    name = "transformer_blocks.1.attn" if block == "joint" else "single_transformer_blocks.0.attn"
    module = pipe.transformer.get_submodule(name)
    original, to_q = module.processor, module.to_q
    norms = {
        name: getattr(module, name, None) for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")
    }
    spy = _Spy(original)
    module.set_processor(spy if source == "block" else _Unhooked(spy))
    windows = {"joint_blocks": (0.5, 1.0), "single_blocks": None} if block == "joint" else {
        "joint_blocks": None, "single_blocks": (0.0, 0.5)}  # fmt: skip
    chunk = 16 * 2**20 if variant in ("all_heads", "lora_like") else 1
    store = DiTStore(1, (8, 8), 1, step_indices=(0, 1), chunk_bytes=chunk, **windows)
    if variant == "lora_like":
        module.to_q = _LowRank(to_q)
    if variant == "qk_norm":
        _add_qk_norms(module)
    layer = next(x for x in dit_layers(pipe.transformer) if x.name == name)
    groups = JointCaptureProcessor(original, store, layer).head_groups(module, torch.zeros(1, 1), 64 + 333)
    assert len(groups) == (1 if chunk > 1 else module.heads)
    try:
        with mock.patch("diffsynth.dit_attention.project", wraps=project) as projections:
            run_pipeline(
                pipe, ["a photo of mold"], [0], num_inference_steps=2, height=128, width=128, store=store
            )
    finally:
        module.set_processor(original)
        module.to_q = to_q
        for norm_name, norm in norms.items():
            if hasattr(module, norm_name):
                setattr(module, norm_name, norm)
    assert projections.called == (source == "own")
    query, key = spy.calls[0]
    cond = slice(query.shape[0] - 1, None)  # SD3: [uncond, cond]; FLUX: [cond]
    i2t, i2i = _reference_probs(query[cond], key[cond], store.text_len, flux)
    assert list(store.counts) == [name] and store.counts[name] == 1
    torch.testing.assert_close(store.cross_mean(), i2t, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(store.self_mean(renormalize=False), i2i, atol=1e-5, rtol=1e-4)


def test_projections_that_cannot_be_sliced_run_whole(pipe):
    attn = pipe.transformer.get_submodule("transformer_blocks.0.attn")
    assert sliceable(attn, torch.device("cpu"))
    assert not sliceable(attn, torch.device("meta"))  # weights elsewhere than the states
    attn.to_k._hf_hook = object()  # an accelerate offload hook loads the weight only when the layer is called
    try:
        assert not sliceable(attn, torch.device("cpu"))
    finally:
        del attn.to_k._hf_hook


def test_captured_run_draws_the_plain_image_and_restores_processors(pipe):
    kwargs = dict(num_inference_steps=2, height=128, width=128)
    before = {name: type(p) for name, p in pipe.transformer.attn_processors.items()}
    plain = run_pipeline(pipe, ["a photo of mold on a wall"], [3], **kwargs)
    store = DiTStore(1, (8, 8), 2, single_blocks=(0.0, 1.0))
    captured = run_pipeline(pipe, ["a photo of mold on a wall"], [3], store=store, **kwargs)
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(captured.images[0]))
    assert store.captured_steps == [0, 1] and store.nbytes() > 0
    assert {name: type(p) for name, p in pipe.transformer.attn_processors.items()} == before
    assert not any(isinstance(p, JointCaptureProcessor) for p in pipe.transformer.attn_processors.values())


def test_processors_are_restored_after_an_error(pipe):
    store = DiTStore(1, (8, 8), 1)
    before = dict(pipe.transformer.attn_processors)
    with pytest.raises(RuntimeError, match="boom"), capture_dit_attention(pipe.transformer, store):
        raise RuntimeError("boom")
    assert dict(pipe.transformer.attn_processors) == before


def test_store_checks_its_grid():
    with pytest.raises(ValueError, match="pool=3"):
        DiTStore(1, (8, 8), 3)
    with pytest.raises(RuntimeError, match="no joint attention"):
        DiTStore(1, (8, 8), 1).cross_mean()
