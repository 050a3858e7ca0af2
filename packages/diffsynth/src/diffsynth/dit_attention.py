"""Attention capture for diffusion transformers (SD3 / SD3.5 MM-DiT, FLUX.1 double- and single-stream blocks).

In MM-DiT joint attention every image query attends to image and text keys in *one* softmax. For each captured
block the image-query rows of that softmax are split into the image->text block (I2T, the analogue of UNet
cross-attention: one column per text position) and the image->image block (I2I, the analogue of self-attention).
Both come from the same probabilities, conditional rows only (the second half of SD3's CFG batch; FLUX.1-dev
and schnell have no unconditional batch).

The model is not changed: a :class:`JointCaptureProcessor` wraps the block's own processor (whatever it is:
``JointAttnProcessor2_0``, ``FluxAttnProcessor``, a fused one) and calls it untouched for the output, so a
captured run draws exactly the pixels of a plain one. Inside the step window, forward hooks on the block's q / k
norms (or, without norms, its q / k projections) read their outputs while the wrapped processor runs (a processor
that does not call them gets the projections computed again, after its call); the capture computes the softmax of
the image queries against all keys, row-chunked, averaged over heads at once and pooled to a coarse token grid
before it is added to fp32 running sums. Never stored: per-head maps, per-layer maps, any ``[N, N]`` map at the
full token grid. The store holds ``[B, Np, Np]`` (I2I) and ``[B, Np, T]`` (I2T) with ``Np`` pooled tokens.

Pooling: query rows are averaged over each ``pool x pool`` cell, key columns of the I2I block are summed, so a
pooled row keeps the mass of the original rows (it stays a distribution over image cells plus text positions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers.models.embeddings import apply_rotary_emb

from diffsynth.steps import StepWindow

Stream = Literal["joint", "single"]


@dataclass(frozen=True)
class DiTLayer:
    """One attention module of a diffusion transformer.

    ``text_first``: the order of the joint sequence (FLUX: ``[text, image]``; SD3: ``[image, text]``).
    """

    name: str
    stream: Stream
    index: int
    text_first: bool


def is_flux_transformer(transformer: torch.nn.Module) -> bool:
    return hasattr(transformer, "single_transformer_blocks")


def dit_layers(transformer: torch.nn.Module) -> list[DiTLayer]:
    """Joint blocks' ``attn`` (SD3.5's extra image-only ``attn2`` is not a joint softmax and is skipped), then
    FLUX's single-stream blocks."""
    flux = is_flux_transformer(transformer)
    layers = [
        DiTLayer(f"transformer_blocks.{i}.attn", "joint", i, flux)
        for i in range(len(transformer.transformer_blocks))
    ]
    singles = getattr(transformer, "single_transformer_blocks", None) or []
    layers += [
        DiTLayer(f"single_transformer_blocks.{i}.attn", "single", i, True) for i in range(len(singles))
    ]
    return layers


def window_indices(count: int, window: tuple[float, float] | None) -> list[int]:
    """Block indices ``floor(start*count) <= i < ceil(end*count)`` of a fractional window (None: none)."""
    if window is None or count == 0:
        return []
    start, end = window
    first, stop = int(start * count), -int(-end * count // 1)
    return list(range(first, min(count, max(stop, first + 1))))


def select_dit_layers(
    transformer: torch.nn.Module, joint: tuple[float, float] | None, single: tuple[float, float] | None
) -> list[DiTLayer]:
    """The layers inside the joint-block window and the single-block window."""
    layers = dit_layers(transformer)
    joint_all = [layer for layer in layers if layer.stream == "joint"]
    single_all = [layer for layer in layers if layer.stream == "single"]
    chosen = [joint_all[i] for i in window_indices(len(joint_all), joint)]
    chosen += [single_all[i] for i in window_indices(len(single_all), single)]
    if not chosen:
        raise ValueError(
            f"no attention block selected (dit_joint_blocks={joint}, dit_single_blocks={single}); the model has "
            f"{len(joint_all)} joint and {len(single_all)} single-stream blocks."
        )
    return chosen


# -- pure tensor pieces (tested on hand-made tensors) --------------------------------------------------------
def split_joint(probs: torch.Tensor, text_len: int, text_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(I2T, I2I)`` column blocks of image-query rows ``[..., rows, T + N]`` of a joint softmax."""
    if text_first:
        return probs[..., :text_len], probs[..., text_len:]
    image_len = probs.shape[-1] - text_len
    return probs[..., image_len:], probs[..., :image_len]


def _add_cells(cell: Callable[[int, int], torch.Tensor], pool: int) -> torch.Tensor:
    """Sum of ``cell(a, c)`` over the ``pool x pool`` offsets of a cell: strided adds of views, many times faster
    on CPU than a reduction over the small middle dimensions of a reshaped tensor (profiled at 1024 px)."""
    total = cell(0, 0).clone()
    for a in range(pool):
        for c in range(pool):
            if a or c:
                total.add_(cell(a, c))
    return total


def pool_rows(rows: torch.Tensor, width: int, pool: int) -> torch.Tensor:
    """Average ``[B, R, S]`` query rows (``R`` = whole token rows of a ``width``-wide grid, a multiple of
    ``pool`` of them) over ``pool x pool`` cells: ``[B, R / pool^2, S]``."""
    if pool == 1:
        return rows
    b, r, s = rows.shape
    bands = r // (pool * width)
    cells = rows.unflatten(1, (bands, pool, width // pool, pool))
    total = _add_cells(lambda a, c: cells[:, :, a, :, c], pool)
    return total.div_(pool * pool).reshape(b, bands * (width // pool), s)


def pool_columns(block: torch.Tensor, grid: tuple[int, int], pool: int) -> torch.Tensor:
    """Sum ``[B, R, h*w]`` image-key columns over ``pool x pool`` cells: ``[B, R, (h/pool)*(w/pool)]``."""
    if pool == 1:
        return block
    b, r, _ = block.shape
    h, w = grid
    cells = block.unflatten(2, (h // pool, pool, w // pool, pool))
    return _add_cells(lambda a, c: cells[:, :, :, a, :, c], pool).reshape(b, r, (h // pool) * (w // pool))


def renormalize_rows(block: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of an I2I block scaled to sum to 1: the part of each row's mass that went to text keys is removed,
    so the block is a random-walk matrix like UNet self-attention and ``A^tau`` does not shrink rows unevenly."""
    return block / block.sum(dim=-1, keepdim=True).clamp_min(eps)


#: Target size of a chunk of fp32 logits (at least one band of ``pool`` token rows of one head): small enough that
#: the softmax and the head sum read it from a core's L2 cache, not from memory. SD3 at 1024 px, one captured
#: block on CPU: one head and 128 rows (2.2 MB) per chunk took about 10% less time than three heads (6.8 MB).
BAND_BYTES = 2 * 2**20


def _head_sum(probs: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """Sum of ``[B, h, R, S]`` over its heads, into the front of ``buffer`` (one head: a view of it, no copy)."""
    if probs.shape[1] == 1:
        return probs[:, 0]
    b, _, r, s = probs.shape
    return torch.sum(probs, dim=1, out=buffer[: b * r * s].view(b, r, s))


def additive_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """An attention mask as fp32 to add to the logits: a boolean one keeps the keys marked True (SDPA's rule,
    False -> -inf); once per call, not per head group and row chunk. Unchanged when already fp32 (or None)."""
    if mask is None or mask.dtype == torch.float32:
        return mask
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))
    return mask.float()


def accumulate_joint(
    sums: tuple[torch.Tensor, torch.Tensor],
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float,
    text_len: int,
    text_first: bool,
    grid: tuple[int, int],
    pool: int,
    chunk_bytes: int,
    attention_mask: torch.Tensor | None = None,
    total_heads: int | None = None,
) -> None:
    """Add ``mean_h softmax(scale q k^T)`` of image queries ``[B, H, N, d]`` against all keys ``[B, H, T+N, d]``,
    split and pooled, into ``sums = (I2T [B, Np, T], I2I [B, Np, Np])`` (fp32). ``total_heads``: the mean's
    denominator when these ``H`` heads are one group of the layer's heads (default ``H``). ``attention_mask``:
    added to the logits, ``[B, 1 | H, 1 | N, T+N]``; a boolean one keeps the keys marked True, as in
    ``F.scaled_dot_product_attention``.

    Exact per head (each head's softmax runs over all its keys), done in groups of heads and bands of ``pool``
    token rows so that the fp32 keys of a group fit half of ``chunk_bytes`` and the fp32 logits of a chunk of
    bands fit that half and :data:`BAND_BYTES` (at least one band).
    The logits and their head sum live in two buffers reused by every band (``out=``): allocating them per band
    cost as much CPU time as the softmax, in page faults.
    """
    b, heads, n, d = query.shape
    attention_mask = additive_mask(attention_mask)
    w = grid[1]
    columns = key.shape[2]
    band = pool * w
    half = max(1, chunk_bytes // 2)
    group = max(1, min(heads, half // max(1, b * columns * d * 4)))
    rows = min(n, band * max(1, min(half, BAND_BYTES) // max(1, b * group * band * columns * 4)))
    logits_buffer = torch.empty(b * group * rows * columns, dtype=torch.float32, device=query.device)
    mean_buffer = torch.empty(
        b * rows * columns if group > 1 else 0, dtype=torch.float32, device=query.device
    )
    i2t, i2i = sums
    pooled_w = w // pool
    share = 1.0 / (total_heads or heads)  # the head mean, applied to the small pooled tensors
    for h0 in range(0, heads, group):
        h1 = min(heads, h0 + group)
        q = query[:, h0:h1].float().mul(scale).contiguous()
        k_t = key[:, h0:h1].float().contiguous().transpose(-1, -2)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            logits = logits_buffer[: b * (h1 - h0) * (r1 - r0) * columns].view(b, h1 - h0, r1 - r0, columns)
            torch.matmul(q[:, :, r0:r1], k_t, out=logits)
            if attention_mask is not None:
                mask = attention_mask if attention_mask.shape[1] == 1 else attention_mask[:, h0:h1]
                logits.add_(mask if mask.shape[-2] == 1 else mask[..., r0:r1, :])
            torch.softmax(logits, dim=-1, out=logits)  # in place: one fused pass
            text, image = split_joint(_head_sum(logits, mean_buffer), text_len, text_first)
            p0, p1 = (r0 // band) * pooled_w, (r1 // band) * pooled_w
            i2t[:, p0:p1].add_(pool_rows(text, w, pool), alpha=share)
            i2i[:, p0:p1].add_(pool_columns(pool_rows(image, w, pool), grid, pool), alpha=share)


class DiTStore(StepWindow):
    """fp32 running sums of the I2T and I2I blocks of the chosen layers, for one batch of ``batch_size`` images.

    Args:
        batch_size: images in the pipeline call.
        grid: (h, w) image-token grid of the transformer (image side / 16 for SD3 and FLUX).
        pool: the sums live on the ``(h/pool, w/pool)`` grid.
        step_window / step_indices: as :class:`diffsynth.attention.AttentionStore`.
        joint_blocks / single_blocks: fractional windows over the joint (double-stream) and FLUX single-stream
            blocks to capture (None: none of that kind), see :func:`window_indices`.
        max_sequence_length: T5 positions the pipeline is run with (None: its default).
        chunk_bytes: budget for the fp32 logits temporaries.
    """

    def __init__(
        self,
        batch_size: int,
        grid: tuple[int, int],
        pool: int = 1,
        *,
        step_window: tuple[float, float] = (0.0, 1.0),
        step_indices: tuple[int, int | None] | None = None,
        joint_blocks: tuple[float, float] | None = (0.0, 1.0),
        single_blocks: tuple[float, float] | None = None,
        max_sequence_length: int | None = None,
        chunk_bytes: int = 16 * 2**20,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"DiTStore: batch_size must be >= 1, got {batch_size}.")
        if pool < 1 or grid[0] % pool or grid[1] % pool:
            raise ValueError(f"DiTStore: pool={pool} must divide the token grid {grid}.")
        self.batch_size = batch_size
        self.grid = (int(grid[0]), int(grid[1]))
        self.pool = int(pool)
        super().__init__(tuple(step_window), step_indices, owner="DiTStore")
        self.joint_blocks = joint_blocks
        self.single_blocks = single_blocks
        self.max_sequence_length = max_sequence_length
        self.chunk_bytes = int(chunk_bytes)
        self.text_len: int | None = None
        self.counts: dict[str, int] = {}
        self._sums: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def pooled_grid(self) -> tuple[int, int]:
        return self.grid[0] // self.pool, self.grid[1] // self.pool

    def begin_step(self, total_steps: int | None, timestep: Any, text_len: int) -> None:
        """Advance to the next executed step (called before each transformer evaluation)."""
        self.text_len = int(text_len)
        self.advance(total_steps, timestep)

    def open(self, layer: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The (I2T, I2I) sums to add one layer call into (allocated on first use); counts the call."""
        if self._sums is None:
            n = self.pooled_grid[0] * self.pooled_grid[1]
            assert self.text_len is not None
            self._sums = (
                torch.zeros(self.batch_size, n, self.text_len, dtype=torch.float32, device=device),
                torch.zeros(self.batch_size, n, n, dtype=torch.float32, device=device),
            )
        self.counts[layer] = self.counts.get(layer, 0) + 1
        return self._sums

    def _mean(self, which: int) -> torch.Tensor:
        total = sum(self.counts.values())
        if self._sums is None or total == 0:
            raise RuntimeError(
                f"no joint attention was captured; executed steps: {self.executed_steps}, "
                f"captured: {self.captured_steps}."
            )
        return self._sums[which] / total

    def cross_mean(self) -> torch.Tensor:
        """I2T averaged over every captured (layer, step): ``[B, Np, T]``."""
        return self._mean(0)

    def self_mean(self, renormalize: bool = True) -> torch.Tensor:
        """I2I averaged over every captured (layer, step): ``[B, Np, Np]``, rows renormalised when asked."""
        mean = self._mean(1)
        return renormalize_rows(mean) if renormalize else mean

    def layers_used(self) -> dict[str, list[str]]:
        names = sorted(self.counts)
        return {"self": names, "cross": names}

    def nbytes(self) -> int:
        """Bytes held by the running sums."""
        return 0 if self._sums is None else sum(t.numel() * t.element_size() for t in self._sums)


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``[B, S, H*d]`` -> ``[B, S, H, d]``."""
    return x.unflatten(-1, (-1, head_dim))


def _projections(attn: Any) -> dict[str, tuple[Any, int, int]]:
    """``name -> (linear, part, parts)``: where the image query/key and the text key come out of the block's
    projections (``part`` of ``parts`` equal slices of the output; fused blocks have one ``[q|k|v]`` linear)."""
    if getattr(attn, "fused_projections", False):
        fused = {"q": (attn.to_qkv, 0, 3), "k": (attn.to_qkv, 1, 3)}
        added = getattr(attn, "to_added_qkv", None)
        return fused | ({"text_k": (added, 1, 3)} if added is not None else {})
    plain = {"q": (attn.to_q, 0, 1), "k": (attn.to_k, 0, 1)}
    added = getattr(attn, "add_k_proj", None)
    return plain | ({"text_k": (added, 0, 1)} if added is not None else {})


def sliceable(attn: Any, device: torch.device) -> bool:
    """Whether every projection is a plain ``nn.Linear`` with a plain weight on ``device``, so a group of heads
    can be projected from its own weight rows. Anything else is run whole: a LoRA-wrapped or quantised layer (its
    output is more than its weight), or one whose weight an offload hook brings in only when it is called."""

    def plain(linear: Any) -> bool:
        return (
            type(linear) is torch.nn.Linear
            and type(linear.weight.data) is torch.Tensor
            and linear.weight.device == device
            and not hasattr(linear, "_hf_hook")
        )

    return all(plain(linear) for linear, _, _ in _projections(attn).values())


def project(attn: Any, name: str, states: torch.Tensor, columns: slice | None) -> torch.Tensor:
    """Output ``columns`` (heads ``h0*d:h1*d``; None: all) of the ``name`` projection (q, k or text_k)."""
    linear, part, parts = _projections(attn)[name]
    if columns is None:
        out = linear(states)
        return out.chunk(parts, dim=-1)[part] if parts > 1 else out
    offset = part * (linear.out_features // parts)
    rows = slice(offset + columns.start, offset + columns.stop)
    bias = None if linear.bias is None else linear.bias[rows]
    return torch.nn.functional.linear(states, linear.weight[rows], bias)


def _norm(module: Any, x: torch.Tensor) -> torch.Tensor:
    """The block's q/k norm (RMS or layer norm over the head dimension), when it has one."""
    return x if module is None else module(x)


def _head_dim(attn: Any) -> int:
    head_dim = getattr(attn, "head_dim", None)
    return int(head_dim) if head_dim else attn.inner_dim // attn.heads


def _norms(attn: Any) -> dict[str, Any]:
    """The q / k norm applied to each projection's output (None: none)."""
    return {"q": attn.norm_q, "k": attn.norm_k, "text_k": getattr(attn, "norm_added_k", None)}


def tap_points(attn: Any) -> dict[str, tuple[Any, int, int, bool]]:
    """``name -> (module, part, parts, normalised)``: where :class:`_Taps` reads the image q, the k and the text k
    the block computes. The q/k norm when the block has one: its output is the tensor the processor keeps, so
    holding it until the capture runs costs no memory (the raw projection output, held, would); else the
    projection. Projections for all when one norm module serves two of them (its outputs could be mixed up)."""
    projections = _projections(attn)
    norms = {name: norm for name, norm in _norms(attn).items() if name in projections and norm is not None}
    plain = {name: (linear, part, parts, False) for name, (linear, part, parts) in projections.items()}
    if len({id(norm) for norm in norms.values()}) < len(norms):
        return plain
    return plain | {name: (norm, 0, 1, True) for name, norm in norms.items()}


def _token_major(
    tensor: torch.Tensor, shape: tuple[int, int, int, int], normalised: bool
) -> torch.Tensor | None:
    """A tapped tensor as a ``[B, S, H, d]`` (``shape``) view: a projection output is ``[B, S, H*d]``, a norm
    output ``[B, S, H, d]`` (FLUX) or ``[B, H, S, d]`` (SD3's processor normalises after its transpose). None
    when it is none of these, or when the two norm layouts cannot be told apart (``S == H``)."""
    b, length, heads, d = shape
    if not normalised:
        return tensor.unflatten(-1, (heads, d)) if tensor.shape == (b, length, heads * d) else None
    token_major, head_major = tensor.shape == (b, length, heads, d), tensor.shape == (b, heads, length, d)
    if token_major == head_major:
        return None
    return tensor if token_major else tensor.transpose(1, 2)


class _Taps:
    """Forward hooks at the :func:`tap_points` of a block for one call of its processor: they hand the tensors
    the block computes anyway to ``ready`` as soon as all are there (before the block's SDPA), so that the
    capture does not project q and k a second time. The tensors are read, never changed, so the block's output
    stays bit for bit the plain one. ``done``: ``ready`` accepted them (else the capture projects on its own)."""

    def __init__(self, attn: Any, ready: Callable[[dict[str, torch.Tensor]], bool]) -> None:
        self.points = tap_points(attn)
        self.ready = ready
        self.outputs: dict[str, torch.Tensor] = {}
        self.done = False
        modules = {id(module): module for module, _, _, _ in self.points.values()}
        self.handles = [
            module.register_forward_hook(
                self._hook([name for name, point in self.points.items() if point[0] is module])
            )
            for module in modules.values()
        ]

    def _hook(self, names: list[str]) -> Callable[..., None]:
        def seen(_module: Any, _args: Any, output: Any) -> None:
            if self.done or not isinstance(output, torch.Tensor):
                return
            for name in names:
                part, parts = self.points[name][1:3]
                self.outputs.setdefault(name, output.chunk(parts, dim=-1)[part] if parts > 1 else output)
            if len(self.outputs) == len(self.points):
                outputs, self.outputs = self.outputs, {}
                self.done = self.ready(outputs)

        return seen

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.outputs = {}


class JointCaptureProcessor:
    """Wraps a DiT block's processor: the output is the wrapped processor's, untouched; inside the step window
    the conditional image queries' joint softmax is added into the store, from the block's own q / k tensors
    when the wrapped processor computes them (:class:`_Taps`), else from projections of its own after the call."""

    def __init__(self, inner: Any, store: DiTStore, layer: DiTLayer) -> None:
        self.inner = inner
        self.store = store
        self.layer = layer

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
        **kwargs: Any,
    ) -> Any:
        if image_rotary_emb is not None:
            kwargs["image_rotary_emb"] = image_rotary_emb
        if not self.store.active:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        args = (attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        taps = _Taps(attn, lambda tensors: self.capture(*args, tapped=tensors))
        try:
            out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        finally:
            taps.remove()
        if not taps.done:
            self.capture(*args)
        return out

    def _cond(self, total: int) -> slice:
        b = self.store.batch_size
        if total == 2 * b:
            return slice(b, 2 * b)  # SD3 CFG batch: [uncond..., cond...]
        if total == b:
            return slice(0, b)  # FLUX (guidance embedding / schnell) or guidance off
        raise RuntimeError(f"{self.layer.name}: attention batch {total} is neither {b} nor {2 * b} images.")

    def _qk(
        self, source: Callable[[str, slice | None], torch.Tensor], columns: slice | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image queries ``[B, N, h, d]`` and all keys ``[B, T+N, h, d]`` of the heads in ``columns`` (None: all),
        in the layer's joint order. ``source(name, columns)``: the normalised q (image rows), k or text k of those heads
        (:meth:`_sources`)."""
        q, k = source("q", columns), source("k", columns)
        if self.layer.stream == "single":
            return q, k
        ek = source("text_k", columns)
        return q, torch.cat([ek, k] if self.layer.text_first else [k, ek], dim=1)

    def _band_heads(self, sequence: int) -> int:
        """Heads whose fp32 logits of one band of ``pool`` token rows fit :data:`BAND_BYTES` (at least one)."""
        band = self.store.pool * self.store.grid[1]
        return max(1, BAND_BYTES // (self.store.batch_size * band * sequence * 4))

    def _group_columns(self, attn: Any, batch: int, sequence: int, most: int | None = None) -> list[slice]:
        """Output columns of head groups whose fp32 keys ``[B, T+N, h*d]`` fit a quarter of the chunk budget, so
        the capture's temporaries do not grow with the model's width; at most ``most`` heads (when the q/k come
        from the block, slicing them is free, so groups can be as small as the cache wants)."""
        d = _head_dim(attn)
        width = int(attn.heads) * d
        group = (
            max(1, min(most or int(attn.heads), self.store.chunk_bytes // 4 // (batch * sequence * d * 4)))
            * d
        )
        return [slice(c, min(width, c + group)) for c in range(0, width, group)]

    def head_groups(self, attn: Any, states: torch.Tensor, sequence: int) -> list[slice | None]:
        """Head groups (:meth:`_group_columns`) to project at once from ``states`` ``[B, S, D]`` when the capture
        projects on its own; one group, ``None``, when a projection cannot be sliced (:func:`sliceable`)."""
        if not sliceable(attn, states.device):
            return [None]
        return self._group_columns(attn, states.shape[0], sequence)

    def _sources(
        self,
        attn: Any,
        hidden: torch.Tensor,
        encoder: torch.Tensor | None,
        cond: slice,
        tapped: dict[str, torch.Tensor] | None,
    ) -> tuple[Callable[[str, slice | None], torch.Tensor], list[slice | None]] | None:
        """``(source, head groups)`` for :meth:`_qk`, from the conditional rows of the ``tapped`` block tensors
        (:func:`tap_points`), or (``tapped`` None) from projections of the conditional states; None when the
        tapped tensors do not have the expected shapes (the processor called those modules on something else)."""
        d, heads = _head_dim(attn), int(attn.heads)
        text_len = int(self.store.text_len or 0)
        image = (
            slice(text_len, None) if self.layer.stream == "single" else slice(None)
        )  # single: [text, image]
        sequence = hidden.shape[1] + (encoder.shape[1] if encoder is not None else 0)
        norms = _norms(attn)
        if tapped is None:
            inputs = {"q": hidden[cond][:, image], "k": hidden[cond]}
            inputs |= {"text_k": encoder[cond]} if encoder is not None else {}

            def projected(name: str, columns: slice | None) -> torch.Tensor:
                return _norm(norms[name], _heads(project(attn, name, inputs[name], columns), d))

            return projected, self.head_groups(attn, hidden[cond], sequence)
        lengths = {"q": hidden.shape[1], "k": hidden.shape[1]}
        lengths |= {"text_k": encoder.shape[1]} if encoder is not None else {}
        points, found = tap_points(attn), {}
        for name, tensor in tapped.items():
            normalised = points[name][3]
            found[name] = _token_major(tensor, (hidden.shape[0], lengths.get(name, -1), heads, d), normalised)
            if found[name] is None:
                return None
            norms[name] = None if normalised else norms[name]

        def block(name: str, columns: slice | None) -> torch.Tensor:
            assert columns is not None
            rows = image if name == "q" else slice(None)
            return _norm(norms[name], found[name][cond, rows, columns.start // d : columns.stop // d])

        return block, self._group_columns(attn, hidden[cond].shape[0], sequence, self._band_heads(sequence))

    @torch.no_grad()
    def capture(
        self,
        attn: Any,
        hidden: torch.Tensor,
        encoder: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        rotary: Any,
        tapped: dict[str, torch.Tensor] | None = None,
    ) -> bool:
        """Add this call's conditional joint softmax to the store, from the block's ``tapped`` q / k tensors
        (:class:`_Taps`) or projections of its own; False when ``tapped`` cannot be used (nothing added).
        Public so that its memory can be measured apart from the wrapped processor's (``bench_attention.py``)."""
        store, layer = self.store, self.layer
        cond = self._cond(hidden.shape[0])
        text_len = int(store.text_len or 0)
        n = hidden.shape[1] - (text_len if layer.stream == "single" else 0)
        if n != store.grid[0] * store.grid[1]:
            raise RuntimeError(f"{layer.name}: {n} image tokens, but the store expects a {store.grid} grid.")
        found = self._sources(attn, hidden, encoder, cond, tapped)
        if found is None:
            return False
        source, groups = found
        mask = additive_mask(attention_mask[cond][..., -n:, :] if attention_mask is not None else None)
        scale = float(getattr(attn, "scale", _head_dim(attn) ** -0.5))
        sums = store.open(layer.name, hidden.device)
        for columns in groups:
            query, key = self._qk(source, columns)
            if rotary is not None:  # FLUX: rotary embedding over [text, image] positions
                cos, sin = rotary
                query = apply_rotary_emb(query, (cos[text_len:], sin[text_len:]), sequence_dim=1)
                key = apply_rotary_emb(key, (cos, sin), sequence_dim=1)
            accumulate_joint(
                sums,
                query.transpose(1, 2),
                key.transpose(1, 2),
                scale,
                text_len,
                layer.text_first,
                store.grid,
                store.pool,
                store.chunk_bytes,
                mask,
                int(attn.heads),
            )
            del query, key
        return True


@contextmanager
def capture_dit_attention(
    transformer: torch.nn.Module,
    store: DiTStore,
    total_steps: Callable[[], int | None] | None = None,
) -> Iterator[list[DiTLayer]]:
    """Wrap the processors of the store's blocks for the duration of the block; a forward pre-hook on the
    transformer advances the store's step and records the text length. Previous processors are put back on exit."""
    layers = select_dit_layers(transformer, store.joint_blocks, store.single_blocks)
    originals: dict[str, Any] = {}
    handle = None
    try:
        for layer in layers:
            module = transformer.get_submodule(layer.name)
            originals[layer.name] = module.processor
            module.set_processor(JointCaptureProcessor(module.processor, store, layer))

        def before(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            encoder = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            timestep = kwargs.get("timestep")
            store.begin_step(total_steps() if total_steps is not None else None, timestep, encoder.shape[1])

        handle = transformer.register_forward_pre_hook(before, with_kwargs=True)
        yield list(layers)
    finally:
        if handle is not None:
            handle.remove()
        for name, processor in originals.items():
            transformer.get_submodule(name).set_processor(processor)
