"""Which decoder sequences attend to which: the table behind SEEM v1's attention masks.

The SEEM decoder runs several kinds of sequences through the same layers (object queries, grounding queries and
text tokens, spatial queries, point tokens and memories). Who may see whom is fixed by a small table instead of
scattered index arithmetic, because an error here silently degrades grounding without breaking any shape.

Conventions (identical to ``torch.nn.MultiheadAttention`` boolean masks):

* ``True`` = blocked. Masks are ``[B * heads, L_q, L_k]``, **batch-major**: row block ``b * heads + h``.
* Self-attention sequence = the present variables in table order; cross-attention sequence = the present
  variables with ``cross_attention=True``, in table order. For SEEM v1 that gives
  self = [object, grounding, spatial, tokens_grounding, tokens_spatial, memories] and
  cross = [object, grounding, spatial, memories].
* Self-attention mask: start all blocked; unblock ``row x column`` for every partner pair; when both sides carry
  group labels (prompt indices) unblock only equal labels (block-diagonal prompts); finally block every padded
  position both as a query (its row) and as a key (its column). A padded row is therefore fully blocked: the
  attention must return zeros for it (see ``decoder_layers.Attention``).
* Cross-attention mask: the previous prediction thresholded at 0.5 (:func:`mask_from_logits`); any fully blocked
  row is unblocked (Mask2Former rule, :func:`unblock_full_rows`) so no query attends to nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class VariableSpec:
    """One kind of sequence in the decoder.

    Attributes:
        name: variable name, e.g. ``queries_object``.
        cross_attention: whether it takes part in masked cross-attention (and the prediction heads).
        partners: variables whose elements this variable's elements may attend to in self-attention.
        padded: whether it comes with a padding mask ``[B, n]`` (True = padding).
        grouped: whether it comes with prompt indices; partners that are both grouped see equal indices only.
    """

    name: str
    cross_attention: bool
    partners: tuple[str, ...]
    padded: bool = False
    grouped: bool = False


SEEM_V1_VARIABLES: tuple[VariableSpec, ...] = (
    VariableSpec("queries_object", True, ("queries_object",)),
    VariableSpec("queries_grounding", True, ("queries_grounding", "tokens_grounding")),
    VariableSpec(
        "queries_spatial", True, ("queries_spatial", "tokens_spatial", "memories_spatial"), grouped=True
    ),
    VariableSpec("tokens_grounding", False, ("queries_grounding", "tokens_grounding"), padded=True),
    VariableSpec("tokens_spatial", False, ("tokens_spatial",), padded=True, grouped=True),
    VariableSpec("memories_spatial", True, ("memories_spatial",), grouped=True),
)


class AttentionLayout:
    """Index ranges and self-attention masks for the variables present in one forward call."""

    def __init__(self, variables: Sequence[VariableSpec] = SEEM_V1_VARIABLES) -> None:
        names = [spec.name for spec in variables]
        if len(set(names)) != len(names):
            raise ValueError(f"AttentionLayout: duplicate variable names in {names}.")
        for spec in variables:
            unknown = set(spec.partners) - set(names)
            if unknown:
                raise ValueError(
                    f"AttentionLayout: {spec.name}.partners names unknown variables {sorted(unknown)}."
                )
        self.variables = tuple(variables)
        self.specs = {spec.name: spec for spec in variables}

    def order(self, present: Mapping[str, int] | Sequence[str], kind: Literal["self", "cross"]) -> list[str]:
        """Present variable names in sequence order for ``kind`` (``"self"`` or ``"cross"``)."""
        if kind not in ("self", "cross"):
            raise ValueError(f"AttentionLayout.order: kind must be 'self' or 'cross', got {kind!r}.")
        unknown = set(present) - set(self.specs)
        if unknown:
            raise KeyError(
                f"AttentionLayout: unknown variables {sorted(unknown)}; known: {list(self.specs)}."
            )
        return [
            spec.name
            for spec in self.variables
            if spec.name in present and (kind == "self" or spec.cross_attention)
        ]

    def ranges(self, lengths: Mapping[str, int], kind: Literal["self", "cross"]) -> dict[str, slice]:
        """``{name: slice}`` of each present variable inside the concatenated ``kind`` sequence."""
        out, start = {}, 0
        for name in self.order(lengths, kind):
            out[name] = slice(start, start + lengths[name])
            start += lengths[name]
        return out

    def self_attention_mask(
        self,
        lengths: Mapping[str, int],
        batch_size: int,
        num_heads: int,
        padding: Mapping[str, Tensor] | None = None,
        groups: Mapping[str, Tensor] | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Boolean self-attention mask ``[batch_size * num_heads, L, L]`` (True = blocked).

        Args:
            lengths: length of each present variable.
            padding: ``{name: [B, n] bool}`` (True = padded) for padded variables; missing = no padding.
            groups: ``{name: [n] or [B, n] int}`` prompt index of each element for grouped variables.
        """
        padding = dict(padding or {})
        groups = dict(groups or {})
        for name in (*padding, *groups):
            if name not in lengths:
                raise KeyError(f"AttentionLayout.self_attention_mask: {name!r} has masks but no length.")
        ranges = self.ranges(lengths, "self")
        total = sum(lengths[name] for name in ranges)
        mask = torch.ones(batch_size, total, total, dtype=torch.bool, device=device)
        for row in ranges:
            for column in self.specs[row].partners:
                if column not in ranges:
                    continue
                block = mask[:, ranges[row], ranges[column]]
                if (
                    self.specs[row].grouped
                    and self.specs[column].grouped
                    and row in groups
                    and column in groups
                ):
                    row_ids = self._per_batch(groups[row], batch_size, lengths[row], row)
                    column_ids = self._per_batch(groups[column], batch_size, lengths[column], column)
                    block.copy_(row_ids[:, :, None] != column_ids[:, None, :])
                else:
                    block.fill_(False)
        for name, pad in padding.items():
            pad = self._per_batch(pad, batch_size, lengths[name], name).to(torch.bool)
            rows = mask[:, ranges[name], :]
            rows.masked_fill_(pad[:, :, None], True)
            columns = mask[:, :, ranges[name]]
            columns.masked_fill_(pad[:, None, :], True)
        return mask.repeat_interleave(num_heads, dim=0)

    @staticmethod
    def _per_batch(values: Tensor, batch_size: int, length: int, name: str) -> Tensor:
        if values.dim() == 1:
            values = values[None].expand(batch_size, -1)
        if tuple(values.shape) != (batch_size, length):
            raise ValueError(
                f"AttentionLayout: mask for {name!r} has shape {tuple(values.shape)}, expected ({batch_size}, {length})."
            )
        return values


def mask_from_logits(mask_logits: Tensor, size: Sequence[int], num_heads: int) -> Tensor:
    """Cross-attention mask from mask logits ``[B, Q, H, W]``: bilinear resize to ``size``, blocked where
    ``sigmoid < 0.5``, repeated over heads batch-major. Returns ``[B * heads, Q, h * w]`` bool, detached."""
    resized = F.interpolate(mask_logits.detach(), size=tuple(size), mode="bilinear", align_corners=False)
    blocked = resized.sigmoid().flatten(2) < 0.5
    return blocked.repeat_interleave(num_heads, dim=0)


def unblock_full_rows(mask: Tensor) -> Tensor:
    """Mask2Former rule for cross-attention: a row that blocks every key is unblocked entirely (new tensor)."""
    return mask & ~mask.all(dim=-1, keepdim=True)
