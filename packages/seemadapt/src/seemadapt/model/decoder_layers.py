"""The SEEM decoder's building blocks: attention, cross-/self-attention and FFN layers, the mask-embedding MLP.

Parameter names equal the official checkpoint's (``nn.MultiheadAttention``'s ``in_proj_weight`` / ``out_proj``), so
official weights load into them unchanged.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLP", "Attention", "CrossAttentionLayer", "FFNLayer", "SelfAttentionLayer"]


class Attention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter names, on seq-first inputs.

    A query whose row of ``attn_mask`` (bool, True = blocked) blocks every key gets a zero attention output instead
    of NaN (the official code's ``nan_to_num`` after the softmax): padded text tokens rely on it.

    ``key_bias_after_matmul``: add the key/value biases after the projection's matmul instead of fusing them into it
    (``addmm``). Cross-attention sets it: its memory used to arrive as a permuted view, for which ``F.linear`` takes
    that path, so its outputs stay bit-identical now that the memory is contiguous (the fused sum rounds differently).
    """

    def __init__(self, dim: int, num_heads: int, key_bias_after_matmul: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim ({dim}) must be divisible by num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.key_bias_after_matmul = key_bias_after_matmul
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """``query [Lq, B, C]``, ``key``/``value [Lk, B, C]``, ``attn_mask [B*heads, Lq, Lk]`` or ``[Lq, Lk]``."""
        len_q, batch, dim = query.shape
        len_k = key.shape[0]
        head_dim = dim // self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).reshape(len_q, batch * self.num_heads, head_dim).transpose(0, 1)
        if self.key_bias_after_matmul:
            k, v = (key @ w_k.t()).add_(b_k), (value @ w_v.t()).add_(b_v)
        else:
            k, v = F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        k = k.reshape(len_k, batch * self.num_heads, head_dim).transpose(0, 1)
        v = v.reshape(len_k, batch * self.num_heads, head_dim).transpose(0, 1)
        scores = (q * head_dim**-0.5) @ k.transpose(1, 2)
        if attn_mask is not None:
            # A finite minimum instead of -inf: partially blocked rows are unchanged (exp underflows to exactly 0),
            # fully blocked rows become uniform and are then zeroed, so no NaN ever appears (forward or backward).
            # In place on a detached alias: ``scores`` is the matmul's fresh output, which autograd does not keep,
            # and the softmax's output is exactly 0 at blocked keys (and its rows are zeroed where all are blocked),
            # so their gradient is already 0 without masked_fill's backward (a copy of the scores' gradient).
            scores.detach().masked_fill_(attn_mask, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)
        if attn_mask is not None:
            weights = torch.where(attn_mask, 0.0, weights)  # softmax keeps its output: a new tensor, one pass
        out = (weights @ v).transpose(0, 1).reshape(len_q, batch, dim)
        return self.out_proj(out)


def _xavier_matrices(module: nn.Module) -> None:
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


class CrossAttentionLayer(nn.Module):
    """Post-norm masked cross-attention: ``norm(tgt + MHA(tgt + query_pos, memory + pos, memory))``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.multihead_attn = Attention(dim, num_heads, key_bias_after_matmul=True)
        self.norm = nn.LayerNorm(dim)
        _xavier_matrices(self)

    def forward(
        self, tgt: Tensor, memory: Tensor, attn_mask: Tensor, pos: Tensor, query_pos: Tensor
    ) -> Tensor:
        return self.norm(tgt + self.multihead_attn(tgt + query_pos, memory + pos, memory, attn_mask))


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention: ``norm(tgt + MHA(tgt + query_pos, tgt + query_pos, tgt))``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)
        _xavier_matrices(self)

    def forward(self, tgt: Tensor, attn_mask: Tensor, query_pos: Tensor) -> Tensor:
        query = tgt + query_pos
        return self.norm(tgt + self.self_attn(query, query, tgt, attn_mask))


class FFNLayer(nn.Module):
    """Post-norm feed-forward: ``norm(tgt + linear2(relu(linear1(tgt))))``."""

    def __init__(self, dim: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm = nn.LayerNorm(dim)
        _xavier_matrices(self)

    def forward(self, tgt: Tensor) -> Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x
