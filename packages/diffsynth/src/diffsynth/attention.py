"""Attention capture for diffusers UNets: processors on chosen layers, fp32 running sums, step counting.

Only the layers at the chosen resolutions get a :class:`CaptureProcessor`; every other layer keeps its own
(fast SDPA) processor. A capture processor computes the layer output with SDPA exactly as diffusers'
``AttnProcessor2_0`` does, and - only for the conditional half of the CFG batch and only inside the step
window - also the attention probabilities ``softmax(q k^T / sqrt(d))`` in fp32, averaged over heads at once
and added into one running sum per (kind, resolution). Nothing per step or per head is kept: the store
holds ``[B, N, N]`` for self-attention and ``[B, N, 77]`` for cross-attention, plus call counts.

Resolutions come from the UNet's structure (which block a layer lives in and how many down/up-samplers
precede it), never from ``sqrt(N)``, so non-square images work.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from diffsynth.steps import StepWindow

logger = logging.getLogger(__name__)

Kind = Literal["self", "cross"]


@dataclass(frozen=True)
class AttentionLayer:
    """One attention module of a UNet: its module path, self/cross, heads and downsampling factor.

    ``factor`` is the spatial downsampling of the layer's grid relative to the latent (1, 2, 4, ...).
    """

    name: str
    kind: Kind
    factor: int
    heads: int

    @property
    def block(self) -> str:
        return self.name.split(".attentions")[0]


def _attention_modules(block: torch.nn.Module, prefix: str) -> Iterator[tuple[str, torch.nn.Module]]:
    attentions = getattr(block, "attentions", None)
    if attentions is None:
        return
    for name, module in attentions.named_modules():
        if isinstance(module, Attention):
            yield f"{prefix}.attentions.{name}", module


def attention_layers(unet: torch.nn.Module) -> list[AttentionLayer]:
    """Every attention layer of a ``UNet2DConditionModel`` with its downsampling factor.

    Down block ``i`` runs at ``2**(downsamplers in blocks < i)``, the mid block at ``2**(all downsamplers)``
    and up block ``j`` at the mid factor divided by ``2**(upsamplers in blocks < j)``.
    """
    layers: list[AttentionLayer] = []
    factor = 1

    def add(block: torch.nn.Module, prefix: str, block_factor: int) -> None:
        for name, module in _attention_modules(block, prefix):
            kind: Kind = "cross" if module.is_cross_attention else "self"
            layers.append(AttentionLayer(name, kind, block_factor, int(module.heads)))

    for i, block in enumerate(unet.down_blocks):
        add(block, f"down_blocks.{i}", factor)
        if getattr(block, "downsamplers", None) is not None:
            factor *= 2
    if getattr(unet, "mid_block", None) is not None:
        add(unet.mid_block, "mid_block", factor)
    for j, block in enumerate(unet.up_blocks):
        add(block, f"up_blocks.{j}", factor)
        if getattr(block, "upsamplers", None) is not None:
            factor //= 2
    return layers


def unet_downsampling(unet: torch.nn.Module) -> int:
    """Total spatial downsampling inside the UNet (8 for SD 1.x/2.x, 4 for SDXL)."""
    return 2 ** sum(getattr(b, "downsamplers", None) is not None for b in unet.down_blocks)


def available_resolutions(unet: torch.nn.Module) -> dict[Kind, list[int]]:
    """Downsampling factors that have self / cross attention layers, e.g. ``{"self": [1, 2, 4, 8], ...}``."""
    found: dict[Kind, set[int]] = {"self": set(), "cross": set()}
    for layer in attention_layers(unet):
        found[layer.kind].add(layer.factor)
    return {kind: sorted(values) for kind, values in found.items()}


def grid_size(latent_size: tuple[int, int], factor: int) -> tuple[int, int]:
    """Attention grid (h, w) of a layer: the latent halved ``log2(factor)`` times, rounding up like the
    stride-2 convolutions of the UNet do."""
    h, w = latent_size
    for _ in range(int(math.log2(factor))):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


@dataclass
class _Sum:
    total: torch.Tensor
    count: int = 0
    layers: set[str] = field(default_factory=set)


class AttentionStore(StepWindow):
    """fp32 running sums of head-averaged attention probabilities, for one batch of ``batch_size`` images.

    Args:
        batch_size: images in the pipeline call (the conditional half of a CFG batch has this many rows).
        latent_size: (h, w) of the latent, used to check every captured map's grid.
        self_factor: downsampling factor of the self-attention layers to capture (``None``: none).
        cross_factors: downsampling factors of the cross-attention layers to capture.
        step_window: fractions ``(start, end)`` of the executed steps to aggregate; step ``i`` of ``T``
            counts when ``floor(start*T) <= i < ceil(end*T)``.
        step_indices: ``(first, stop)`` indices of executed steps instead of fractions (``stop`` may be None).
        class_embeddings: ``[B, 77, D]`` encoder states of class-only prompts (class-prompt mode). When set,
            captured cross-attention scores the conditional queries against these keys instead of the
            caption's; generation itself is untouched.
        class_columns: ``[B, 77]`` bool; when set, the cross softmax is taken over these columns only
            (renormalised over the class tokens) instead of the whole sequence.
        chunk_bytes: budget for the fp32 probability temporaries; queries are processed in row chunks.
    """

    def __init__(
        self,
        batch_size: int,
        latent_size: tuple[int, int],
        self_factor: int | None,
        cross_factors: Sequence[int],
        *,
        step_window: tuple[float, float] = (0.0, 1.0),
        step_indices: tuple[int, int | None] | None = None,
        class_embeddings: torch.Tensor | None = None,
        class_columns: torch.Tensor | None = None,
        chunk_bytes: int = 16 * 2**20,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"AttentionStore: batch_size must be >= 1, got {batch_size}.")
        if class_embeddings is not None and class_embeddings.shape[0] != batch_size:
            raise ValueError(
                f"AttentionStore: class_embeddings has {class_embeddings.shape[0]} rows for {batch_size} images."
            )
        if class_columns is not None and class_columns.shape[0] != batch_size:
            raise ValueError(
                f"AttentionStore: class_columns has {class_columns.shape[0]} rows for {batch_size} images."
            )
        self.batch_size = batch_size
        self.latent_size = (int(latent_size[0]), int(latent_size[1]))
        self.self_factor = self_factor
        self.cross_factors = tuple(sorted(set(cross_factors)))
        super().__init__(step_window, step_indices, owner="AttentionStore")
        self.class_embeddings = class_embeddings
        self.class_columns = class_columns
        self.chunk_bytes = int(chunk_bytes)
        self._sums: dict[tuple[Kind, int], _Sum] = {}

    # -- steps ---------------------------------------------------------------------------------------
    def begin_step(self, total_steps: int | None = None, timestep: Any = None) -> None:
        """Advance to the next executed step (called before each UNet evaluation)."""
        self.advance(total_steps, timestep)

    # -- sums ----------------------------------------------------------------------------------------
    def grid(self, factor: int) -> tuple[int, int]:
        return grid_size(self.latent_size, factor)

    def wants(self, kind: Kind, factor: int) -> bool:
        return factor == self.self_factor if kind == "self" else factor in self.cross_factors

    def open(self, kind: Kind, factor: int, layer: str, columns: int, device: torch.device) -> torch.Tensor:
        """The running sum to add one layer call into (allocated on first use); counts the call."""
        h, w = self.grid(factor)
        key = (kind, factor)
        entry = self._sums.get(key)
        if entry is None:
            total = torch.zeros(self.batch_size, h * w, columns, dtype=torch.float32, device=device)
            entry = self._sums[key] = _Sum(total)
        entry.count += 1
        entry.layers.add(layer)
        return entry.total

    def mean(self, kind: Kind, factor: int) -> torch.Tensor:
        """Average over every captured (layer, step): ``[B, N, S]`` with ``N = h*w`` of the factor's grid."""
        entry = self._sums.get((kind, factor))
        if entry is None or entry.count == 0:
            raise RuntimeError(
                f"no {kind}-attention was captured at factor {factor} (latent {self.latent_size}); "
                f"executed steps: {self.executed_steps}, captured: {self.captured_steps}."
            )
        return entry.total / entry.count

    def count(self, kind: Kind, factor: int) -> int:
        entry = self._sums.get((kind, factor))
        return 0 if entry is None else entry.count

    def layers_used(self) -> dict[str, list[str]]:
        used: dict[str, set[str]] = {"self": set(), "cross": set()}
        for (kind, _), entry in self._sums.items():
            used[kind] |= entry.layers
        return {k: sorted(v) for k, v in used.items()}

    def nbytes(self) -> int:
        """Bytes held by the running sums (the store's whole footprint besides the inputs)."""
        return sum(e.total.numel() * e.total.element_size() for e in self._sums.values())


def _accumulate_probs(
    total: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float,
    column_mask: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    chunk_bytes: int,
) -> None:
    """``total[b, i, :] += mean_h softmax(scale * q[b,h,i] . k[b,h,:])`` in fp32, chunked over query rows.

    ``query``/``key`` are ``[B, heads, N, d]`` / ``[B, heads, S, d]``. The softmax is done in place on each
    chunk's logits, so the only temporary is one ``[B, heads, rows, S]`` fp32 block within ``chunk_bytes``.
    """
    batch, heads, rows, _ = query.shape
    columns = key.shape[2]
    q = query.float() * scale
    k_t = key.float().transpose(-1, -2)
    block = max(1, chunk_bytes // max(1, batch * heads * columns * 4))
    for r0 in range(0, rows, block):
        r1 = min(rows, r0 + block)
        logits = torch.matmul(q[:, :, r0:r1], k_t)
        if attention_mask is not None:
            mask = attention_mask[..., r0:r1, :] if attention_mask.shape[-2] == rows else attention_mask
            logits = logits + mask.float()
        if column_mask is not None:
            logits.masked_fill_(~column_mask[:, None, None, :], float("-inf"))
        logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
        logits.div_(logits.sum(dim=-1, keepdim=True))
        total[:, r0:r1].add_(logits.mean(dim=1))


class CaptureProcessor:
    """diffusers attention processor that also accumulates the layer's probabilities into a store.

    The output path is the one of ``AttnProcessor2_0`` (SDPA on the full batch), so a captured run draws
    the same image as a plain one. Probabilities are computed only for the conditional half of the batch
    (``[uncond..., cond...]`` under CFG; the whole batch when CFG is off) and only while the store is active.
    """

    def __init__(self, store: AttentionStore, layer: AttentionLayer) -> None:
        self.store = store
        self.layer = layer
        self._class_keys: torch.Tensor | None = None

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        is_self = encoder_hidden_states is None
        if is_self:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if self.store.active:
            with torch.no_grad():
                self._capture(attn, query, key, attention_mask, head_dim)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _cond_rows(self, total: int) -> slice:
        b = self.store.batch_size
        if total == 2 * b:
            return slice(b, 2 * b)  # CFG: [uncond..., cond...]
        if total == b:
            return slice(0, b)  # guidance <= 1: no unconditional half
        raise RuntimeError(
            f"{self.layer.name}: attention batch {total} is neither {b} nor {2 * b} images; the store was "
            "built for a different batch (num_images_per_prompt must be 1)."
        )

    def _keys_from_class_prompt(self, attn: Any, head_dim: int) -> torch.Tensor:
        if self._class_keys is None:
            states = self.store.class_embeddings.to(
                device=attn.to_k.weight.device, dtype=attn.to_k.weight.dtype
            )
            if attn.norm_cross:
                states = attn.norm_encoder_hidden_states(states)
            keys = attn.to_k(states)
            keys = keys.view(keys.shape[0], -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_k is not None:
                keys = attn.norm_k(keys)
            self._class_keys = keys  # class-prompt keys are the same at every step: compute once per run
        return self._class_keys

    def _capture(
        self,
        attn: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        head_dim: int,
    ) -> None:
        layer, store = self.layer, self.store
        cond = self._cond_rows(query.shape[0])
        h, w = store.grid(layer.factor)
        if query.shape[2] != h * w:
            raise RuntimeError(
                f"{layer.name}: {query.shape[2]} query positions, but the latent {store.latent_size} at "
                f"factor {layer.factor} gives a {h}x{w} grid; image size and store disagree."
            )
        q = query[cond]
        column_mask = None
        mask = attention_mask[cond] if attention_mask is not None else None
        if layer.kind == "cross":
            if store.class_embeddings is not None:
                k = self._keys_from_class_prompt(attn, head_dim)
                mask = None  # the caption's mask does not apply to the class prompt's keys
            else:
                k = key[cond]
            if store.class_columns is not None:
                column_mask = store.class_columns.to(q.device)
        else:
            k = key[cond]
        total = store.open(layer.kind, layer.factor, layer.name, k.shape[2], q.device)
        _accumulate_probs(total, q, k, float(attn.scale), column_mask, mask, store.chunk_bytes)


def select_layers(unet: torch.nn.Module, store: AttentionStore) -> list[AttentionLayer]:
    """The layers a store wants; an error lists what the UNet offers when a resolution has no layer."""
    layers = attention_layers(unet)
    chosen = [layer for layer in layers if store.wants(layer.kind, layer.factor)]
    offered = available_resolutions(unet)
    wanted = ([("self", store.self_factor)] if store.self_factor is not None else []) + [
        ("cross", f) for f in store.cross_factors
    ]
    for kind, factor in wanted:
        if not any(layer.kind == kind and layer.factor == factor for layer in chosen):
            raise ValueError(
                f"the UNet has no {kind}-attention at latent/{factor}; it has {kind}-attention at latent/"
                f"{offered[kind]}. Choose another {kind}_resolution."
            )
    return chosen


@contextmanager
def capture_attention(
    unet: torch.nn.Module,
    store: AttentionStore,
    total_steps: Callable[[], int | None] | None = None,
) -> Iterator[list[AttentionLayer]]:
    """Install capture processors on the store's layers for the duration of the block.

    A forward pre-hook on the UNet advances the store's step before every UNet evaluation (reading the
    number of executed steps from ``total_steps()``, e.g. ``lambda: pipe.num_timesteps``). The previous
    processors of the captured layers - whatever they were - are put back on exit, also after an error.
    """
    chosen = select_layers(unet, store)
    originals: dict[str, Any] = {}
    handle = None
    try:
        for layer in chosen:
            module = unet.get_submodule(layer.name)
            originals[layer.name] = module.processor
            module.set_processor(CaptureProcessor(store, layer))

        def before_unet(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
            store.begin_step(total_steps() if total_steps is not None else None, timestep)

        handle = unet.register_forward_pre_hook(before_unet, with_kwargs=True)
        yield chosen
    finally:
        if handle is not None:
            handle.remove()
        for name, processor in originals.items():
            unet.get_submodule(name).set_processor(processor)
