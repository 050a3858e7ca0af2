"""SEEM v1 decoder: masked-attention transformer decoder with text-joint classification and prompt queries.

Parameter names follow the official checkpoint below ``sem_seg_head.predictor.`` exactly (including the typo
``mask_sptial_embed``), so an official state dict loads with ``strict=True``. The interactive parameters
(``mask_sptial_embed``, ``spatial_embed``, ``spatial_featured``, ``pn_indicator``) always exist; the interactive
branch runs only when ``spatial`` prompts are passed.

Sequences (see :mod:`seemadapt.model.attention_layout` for who attends to whom): object queries always; grounding
queries (a copy of the object queries taken at decoder entry) and text tokens when ``grounding_tokens`` are given;
spatial queries, point tokens and memories when ``spatial`` is given. Object queries never see prompt information,
so generic segmentation outputs do not depend on the prompts.

Differences from the official code that change no real output: padded point tokens are zero vectors and fully
blocked (officially they are sampled at the image corner and see each other, but nothing ever attends to them);
prompt points are drawn by Gumbel top-k (same distribution as ``torch.multinomial`` without replacement, no 2**24
limit); every random draw (points, spatial-query picks, memory slots) uses ``spatial["generator"]`` when given.

Adapter hooks (for fine-tuning; all default to ``None`` and then add no state-dict keys). Each hook is an
``nn.ModuleList`` of modules mapping ``[..., hidden_dim] -> [..., hidden_dim]`` whose output is **added** to the
hooked tensor (a zero output leaves the model unchanged; the residual is the decoder's, not the adapter's):

* ``cross_attention_adapters[i]`` (length ``num_transformer_layers``): after cross-attention layer ``i`` (which already
  includes its residual and LayerNorm), on the whole cross-attention sequence, seq-first ``[L, B, C]``:
  ``x = x + adapter(x)``.
* ``self_attention_adapters[i]``: after self-attention layer ``i``, before the FFN, on the whole self-attention
  sequence (text and point tokens included), seq-first.
* ``ffn_adapters[i]``: after FFN layer ``i``, on the whole self-attention sequence, seq-first.
* ``mask_embed_adapters[j]`` (length ``dec_layers``; ``j = 0`` is the prediction on the initial queries, ``j = i + 1``
  follows layer ``i``): parallel branch of the mask head on ``d = decoder_norm(output)`` batch-first ``[B, Q, C]``:
  ``mask_emb = mask_embed(d) + adapter(d)``; class logits are unchanged. Its output width must be ``mask_dim``.

The fork's plain residual adapter (``x + up(drop(relu(down(x))))``) is therefore a module returning only
its branch ``up(drop(relu(down(x))))``; its LN-head adapter (no residual) is used as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seemadapt.model.attention_layout import AttentionLayout, mask_from_logits, unblock_full_rows
from seemadapt.model.config import DecoderConfig, LanguageConfig
from seemadapt.model.decoder_layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from seemadapt.model.language import LanguageEncoder
from seemadapt.model.position_encoding import PositionEmbeddingSine

TASKS = ("seg", "grounding_eval", "spatial")


@dataclass
class _Prompts:
    """Interactive prompts prepared for one forward call (see :meth:`SEEMDecoder._prepare_spatial`)."""

    num_prompts: int
    mean_pos: Tensor  # [B, n, C]
    mean_neg: Tensor  # [B, n, C]
    tokens: list[Tensor]  # per level [N, B, C]
    token_padding: list[Tensor]  # per level [B, N] True = padding
    token_groups: list[Tensor]  # per level [B, N] prompt index, -1 for padding
    prev_mask: Tensor | None  # [B, n, h, w] logits of the previous round
    generator: torch.Generator | None


@dataclass
class _Sequences:
    """The decoder's token sequences by name (see :class:`AttentionLayout`): values, positions, padding, groups."""

    outputs: dict[str, Tensor] = field(default_factory=dict)
    positions: dict[str, Tensor] = field(default_factory=dict)
    padding: dict[str, Tensor] = field(default_factory=dict)
    groups: dict[str, Tensor] = field(default_factory=dict)


class SEEMDecoder(nn.Module):
    """SEEM v1 decoder (``seem_v1``) with its language encoder as the submodule ``lang_encoder``.

    Args:
        config: decoder geometry.
        language: language-encoder geometry; ``language.dim_proj`` must equal ``config.dim_proj``.
    """

    def __init__(self, config: DecoderConfig, language: LanguageConfig) -> None:
        super().__init__()
        if language.dim_proj != config.dim_proj:
            raise ValueError(
                f"SEEMDecoder: language.dim_proj ({language.dim_proj}) must equal config.dim_proj ({config.dim_proj})."
            )
        self.config = config
        hidden = config.hidden_dim
        num_layers = config.num_transformer_layers
        self.num_heads = config.num_heads
        self.pe_layer = PositionEmbeddingSine(hidden // 2, normalize=True)

        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden, config.num_heads) for _ in range(num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden, config.num_heads) for _ in range(num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden, config.dim_feedforward) for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden)
        self.query_feat = nn.Embedding(config.num_queries, hidden)
        self.query_embed = nn.Embedding(config.num_queries, hidden)
        self.level_embed = nn.Embedding(config.num_feature_levels, hidden)
        self.lang_encoder = LanguageEncoder(language)
        self.mask_embed = MLP(hidden, hidden, config.mask_dim, 3)
        self.class_embed = nn.Parameter(torch.empty(hidden, config.dim_proj))
        nn.init.trunc_normal_(self.class_embed, std=0.02)

        # Interactive (visual prompt) parameters: always built so official checkpoints load strictly.
        self.mask_sptial_embed = nn.ParameterList(
            nn.Parameter(torch.empty(hidden, hidden)) for _ in range(config.num_feature_levels)
        )
        for weight in self.mask_sptial_embed:
            nn.init.trunc_normal_(weight, std=0.02)
        self.spatial_embed = nn.Embedding(config.spatial_memories, hidden)
        self.spatial_featured = nn.Embedding(config.spatial_memories, hidden)
        self.pn_indicator = nn.Embedding(2, hidden)

        self.layout = AttentionLayout()
        self.cross_attention_adapters: nn.ModuleList | None = None
        self.self_attention_adapters: nn.ModuleList | None = None
        self.ffn_adapters: nn.ModuleList | None = None
        self.mask_embed_adapters: nn.ModuleList | None = None

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        multi_scale_features: list[Tensor],
        mask_features: Tensor,
        class_embeddings: Tensor | None,
        grounding_tokens: Tensor | None = None,
        grounding_padding_mask: Tensor | None = None,
        spatial: dict[str, Any] | None = None,
        task: str = "seg",
    ) -> dict[str, Any]:
        """Run the decoder.

        Args:
            multi_scale_features: ``num_feature_levels`` maps ``[B, hidden, h, w]`` (strides 32, 16, 8).
            mask_features: ``[B, mask_dim, H/4, W/4]``.
            class_embeddings: ``[K+1, dim_proj]`` text embeddings of the classes plus background; ``None`` skips
                ``pred_logits`` (e.g. for grounding-only inference).
            grounding_tokens: ``[T, B, hidden]`` seq-first text token embeddings (after ``lang_proj``).
            grounding_padding_mask: ``[B, T]``, True = padding; ``None`` = no padding.
            spatial: interactive prompts: ``pos_masks`` (list of B bool ``[n_b, H, W]``), optional ``neg_masks``
                (same shapes), ``prev_mask`` (``[B, n, H/4, W/4]`` logits of the previous round, enables the
                memories) and ``generator`` (``torch.Generator`` for reproducible sampling).
            task: ``"seg"``, ``"grounding_eval"`` or ``"spatial"`` (returns only ``{"prev_mask"}``).

        Returns:
            ``pred_logits [B,Q,K+1]``, ``pred_masks [B,Q,H/4,W/4]``, ``aux_outputs`` (same keys for predictions
            ``0..dec_layers-2``); with grounding or spatial prompts also ``pred_captions [B,Q,dim_proj]``; with
            grounding ``pred_gmasks``, ``pred_gtexts``; with spatial prompts ``pred_smasks``, ``pred_stexts``,
            ``pred_smaskembs`` ``[B, query_number*n, ...]`` and ``pred_pspatials``, ``pred_nspatials [B, n, C]``.
        """
        self._check_inputs(multi_scale_features, spatial, task)
        batch = mask_features.shape[0]
        device = mask_features.device
        src, pos, sizes = self._prepare_features(multi_scale_features)

        seq = _Sequences()
        seq.outputs["queries_object"] = self.query_feat.weight[:, None].repeat(1, batch, 1)
        seq.positions["queries_object"] = self.query_embed.weight[:, None].repeat(1, batch, 1)
        prompts = None
        if spatial is not None:
            prompts = self._prepare_spatial(spatial, src, sizes, mask_features)
            self._add_spatial_queries(seq, prompts, batch, device)
        if grounding_tokens is not None:
            self._add_grounding_tokens(seq, grounding_tokens, grounding_padding_mask, batch, device)

        predictions = []
        cross_ranges = self.layout.ranges(_lengths(seq.outputs), "cross")
        output, query_pos = _gather(seq.outputs, seq.positions, cross_ranges)
        predictions.append(self._predict(output, mask_features, class_embeddings, cross_ranges, 0))
        for i in range(self.config.num_transformer_layers):
            level = i % self.config.num_feature_levels
            output = self._cross_attend(
                i, output, query_pos, predictions[-1]["masks"], (src, pos, sizes), cross_ranges, seq, prompts
            )
            _scatter(output, seq.outputs, cross_ranges)
            self._self_attend(i, level, seq, prompts, batch, device)
            output, query_pos = _gather(seq.outputs, seq.positions, cross_ranges)
            predictions.append(self._predict(output, mask_features, class_embeddings, cross_ranges, i + 1))

        results = [
            self._organize(p, cross_ranges, prompts, grounding_tokens is not None) for p in predictions
        ]
        if task == "spatial":
            return {"prev_mask": self._best_spatial_masks(results[-1], prompts.num_prompts)}
        final = results[-1]
        final["aux_outputs"] = results[:-1]
        return final

    # ------------------------------------------------------------------ forward steps

    def _check_inputs(
        self, multi_scale_features: list[Tensor], spatial: dict[str, Any] | None, task: str
    ) -> None:
        config = self.config
        if task not in TASKS:
            raise ValueError(f"SEEMDecoder.forward: task must be one of {TASKS}, got {task!r}.")
        if task == "spatial" and spatial is None:
            raise ValueError("SEEMDecoder.forward: task='spatial' needs spatial prompts (spatial=...).")
        if len(multi_scale_features) != config.num_feature_levels:
            raise ValueError(
                f"SEEMDecoder.forward: expected {config.num_feature_levels} feature levels, "
                f"got {len(multi_scale_features)}."
            )
        self._check_adapters()

    def _add_spatial_queries(self, seq: _Sequences, prompts: Any, batch: int, device: torch.device) -> None:
        """``query_number`` randomly picked object queries per visual prompt, and the memories after round one."""
        config = self.config
        count = config.query_number * prompts.num_prompts
        picked = torch.randint(
            0,
            config.num_queries,
            (count,),
            generator=prompts.generator,
            device=_generator_device(prompts.generator, device),
        ).to(device)
        seq.outputs["queries_spatial"] = seq.outputs["queries_object"][picked].clone()
        seq.positions["queries_spatial"] = seq.positions["queries_object"][picked].clone()
        seq.groups["queries_spatial"] = torch.arange(prompts.num_prompts, device=device).repeat_interleave(
            config.query_number
        )
        if prompts.prev_mask is not None:
            seq.outputs["memories_spatial"] = self.spatial_featured.weight[:, None].repeat(1, batch, 1)
            seq.positions["memories_spatial"] = self.spatial_embed.weight[:, None].repeat(1, batch, 1)

    def _add_grounding_tokens(
        self,
        seq: _Sequences,
        grounding_tokens: Tensor,
        grounding_padding_mask: Tensor | None,
        batch: int,
        device: torch.device,
    ) -> None:
        """Grounding queries (copies of the object queries) and the text tokens they attend to."""
        hidden = self.config.hidden_dim
        if grounding_tokens.dim() != 3 or grounding_tokens.shape[1:] != (batch, hidden):
            raise ValueError(
                f"SEEMDecoder.forward: grounding_tokens must be [T, {batch}, {hidden}] (seq-first), "
                f"got {tuple(grounding_tokens.shape)}."
            )
        seq.outputs["queries_grounding"] = seq.outputs["queries_object"].clone()
        seq.positions["queries_grounding"] = seq.positions["queries_object"].clone()
        seq.outputs["tokens_grounding"] = grounding_tokens
        seq.positions["tokens_grounding"] = grounding_tokens.detach().clone()
        if grounding_padding_mask is None:
            grounding_padding_mask = torch.zeros(
                batch, grounding_tokens.shape[0], dtype=torch.bool, device=device
            )
        seq.padding["tokens_grounding"] = grounding_padding_mask.to(device=device, dtype=torch.bool)

    def _cross_attend(
        self,
        i: int,
        output: Tensor,
        query_pos: Tensor,
        prev_masks: Tensor,
        features: tuple[list[Tensor], list[Tensor], list[tuple[int, int]]],
        cross_ranges: dict[str, slice],
        seq: _Sequences,
        prompts: Any,
    ) -> Tensor:
        """Cross-attention layer ``i`` (+ its adapter), masked by the previous prediction at its feature level."""
        src, pos, sizes = features
        level = i % self.config.num_feature_levels
        # Prediction i (on the current queries) masks layer i, at the resolution of its feature level.
        attn_mask = mask_from_logits(prev_masks, sizes[level], self.num_heads)
        if "memories_spatial" in cross_ranges:
            attn_mask, seq.groups["memories_spatial"] = self._memory_mask(
                attn_mask, cross_ranges["memories_spatial"], prompts, sizes[level]
            )
        attn_mask = unblock_full_rows(attn_mask)
        output = self.transformer_cross_attention_layers[i](
            output, src[level], attn_mask, pos[level], query_pos
        )
        if self.cross_attention_adapters is not None:
            output = output + self.cross_attention_adapters[i](output)
        return output

    def _self_attend(
        self, i: int, level: int, seq: _Sequences, prompts: Any, batch: int, device: torch.device
    ) -> None:
        """Self-attention and FFN layer ``i`` (+ adapters) over every sequence, written back into ``seq``."""
        if prompts is not None:  # point tokens are re-sampled from this layer's level, not carried over
            seq.outputs["tokens_spatial"] = prompts.tokens[level]
            seq.positions["tokens_spatial"] = prompts.tokens[level].detach().clone()
            seq.padding["tokens_spatial"] = prompts.token_padding[level]
            seq.groups["tokens_spatial"] = prompts.token_groups[level]
        lengths = _lengths(seq.outputs)
        self_ranges = self.layout.ranges(lengths, "self")
        output, query_pos = _gather(seq.outputs, seq.positions, self_ranges)
        self_mask = self.layout.self_attention_mask(
            lengths, batch, self.num_heads, padding=seq.padding, groups=seq.groups, device=device
        )
        output = self.transformer_self_attention_layers[i](output, self_mask, query_pos)
        if self.self_attention_adapters is not None:
            output = output + self.self_attention_adapters[i](output)
        output = self.transformer_ffn_layers[i](output)
        if self.ffn_adapters is not None:
            output = output + self.ffn_adapters[i](output)
        _scatter(output, seq.outputs, self_ranges)

    # ------------------------------------------------------------------ pieces

    def _check_adapters(self) -> None:
        expected = {
            "cross_attention_adapters": self.config.num_transformer_layers,
            "self_attention_adapters": self.config.num_transformer_layers,
            "ffn_adapters": self.config.num_transformer_layers,
            "mask_embed_adapters": self.config.dec_layers,
        }
        for name, length in expected.items():
            hooks = getattr(self, name)
            if hooks is not None and len(hooks) != length:
                raise ValueError(f"SEEMDecoder.{name} must hold {length} modules, got {len(hooks)}.")

    def _prepare_features(
        self, features: Sequence[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[tuple[int, int]]]:
        src, pos, sizes = [], [], []
        for level, x in enumerate(features):
            if x.shape[1] != self.config.hidden_dim:
                raise ValueError(
                    f"SEEMDecoder: feature level {level} has {x.shape[1]} channels, expected hidden_dim "
                    f"{self.config.hidden_dim} (SEEM v1 has no decoder input projection)."
                )
            sizes.append((x.shape[-2], x.shape[-1]))
            # Seq-first and contiguous once per level: every cross-attention layer projects them, and a permuted
            # view would be copied by each projection (and its gradient reshaped back in backward).
            pos.append(self.pe_layer(x).flatten(2).permute(2, 0, 1).contiguous())
            src.append(
                (x.flatten(2) + self.level_embed.weight[level][None, :, None]).permute(2, 0, 1).contiguous()
            )
        return src, pos, sizes

    def _predict(
        self,
        output: Tensor,
        mask_features: Tensor,
        class_embeddings: Tensor | None,
        ranges: dict[str, slice],
        index: int,
    ) -> dict[str, Tensor | None]:
        """Heads on the cross-attention sequence ``[L, B, C]``: captions (joint-space embeddings), masks, logits."""
        decoded = self.decoder_norm(output).transpose(0, 1)
        captions = decoded @ self.class_embed
        mask_emb = self.mask_embed(decoded)
        if self.mask_embed_adapters is not None:
            mask_emb = mask_emb + self.mask_embed_adapters[index](decoded)
        masks = torch.einsum("bqc,bchw->bqhw", mask_emb, mask_features)
        logits = None
        if class_embeddings is not None:
            logits = self.lang_encoder.similarity(captions[:, ranges["queries_object"]], class_embeddings)
        return {
            "logits": logits,
            "masks": masks,
            "captions": captions,
            "mask_embs": mask_emb,
        }

    def _organize(
        self,
        prediction: dict[str, Tensor | None],
        ranges: dict[str, slice],
        prompts: _Prompts | None,
        grounding: bool,
    ) -> dict[str, Any]:
        objects = ranges["queries_object"]
        # split, not slices: the ranges tile the sequence, so backward concatenates the parts' gradients once
        # instead of padding each slice's gradient to the full mask stack and adding them up
        masks = dict(zip(ranges, prediction["masks"].split([r.stop - r.start for r in ranges.values()], 1)))
        out: dict[str, Any] = {"pred_masks": masks["queries_object"]}
        if prediction["logits"] is not None:
            out["pred_logits"] = prediction["logits"]
        if grounding or prompts is not None:
            out["pred_captions"] = prediction["captions"][:, objects]
        if grounding:
            out["pred_gmasks"] = masks["queries_grounding"]
            out["pred_gtexts"] = prediction["captions"][:, ranges["queries_grounding"]]
        if prompts is not None:
            spatial = ranges["queries_spatial"]
            out["pred_smasks"] = masks["queries_spatial"]
            out["pred_stexts"] = prediction["captions"][:, spatial]
            out["pred_smaskembs"] = prediction["mask_embs"][:, spatial]
            out["pred_pspatials"] = prompts.mean_pos
            out["pred_nspatials"] = prompts.mean_neg
        return out

    def _best_spatial_masks(self, result: dict[str, Any], num_prompts: int) -> Tensor:
        """For each prompt, the mask of its spatial query whose mask embedding best matches the prompt embedding."""
        scores = result["pred_smaskembs"] @ result["pred_pspatials"].transpose(1, 2)  # [B, qn*n, n]
        owner = torch.arange(num_prompts, device=scores.device).repeat_interleave(self.config.query_number)
        foreign = owner[:, None] != torch.arange(num_prompts, device=scores.device)[None, :]
        best = scores.masked_fill(foreign, float("-inf")).argmax(dim=1)  # [B, n]
        masks = result["pred_smasks"]
        return torch.gather(masks, 1, best[:, :, None, None].expand(-1, -1, *masks.shape[-2:]))

    def _memory_mask(
        self, attn_mask: Tensor, rows: slice, prompts: _Prompts, size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Memories attend where the previous round's mask of their prompt is on; slots are assigned to prompts at
        random (sorted) at every layer. Returns the updated mask and each memory slot's prompt index."""
        prev = prompts.prev_mask
        slots = rows.stop - rows.start
        # drawn as SEEM draws them (multinomial over equal weights), so a seeded run picks the original's slots
        weights = torch.ones(prev.shape[1], device=_generator_device(prompts.generator, prev.device))
        owner = (
            torch.multinomial(weights, slots, replacement=True, generator=prompts.generator)
            .sort()
            .values.to(prev.device)
        )
        memory_mask = mask_from_logits(prev, size, self.num_heads)[:, owner]
        attn_mask = attn_mask.clone()
        attn_mask[:, rows] = memory_mask
        return attn_mask, owner

    def _prepare_spatial(
        self, spatial: dict[str, Any], src: list[Tensor], sizes: list[tuple[int, int]], mask_features: Tensor
    ) -> _Prompts:
        """Sample prompt points and build the mean prompt embeddings and the per-level point tokens.

        Points are drawn from the prompt masks, balanced so every non-empty mask gets the same share, at most
        ``max_spatial_len[level]`` per image (``max_spatial_len[-1]`` for the mean embeddings); coordinates are
        normalised by the mask size and sampled bilinearly with ``align_corners=True``.
        """
        known = {"pos_masks", "neg_masks", "prev_mask", "generator"}
        if "pos_masks" not in spatial or set(spatial) - known:
            raise ValueError(
                f"SEEMDecoder: spatial must have 'pos_masks' and only keys from {sorted(known)}."
            )
        pos_masks = list(spatial["pos_masks"])
        batch = mask_features.shape[0]
        if len(pos_masks) != batch:
            raise ValueError(f"SEEMDecoder: spatial['pos_masks'] needs one mask stack per image ({batch}).")
        neg_masks = spatial.get("neg_masks")
        neg_masks = [m[:0] if neg_masks is None else neg_masks[b] for b, m in enumerate(pos_masks)]
        generator = spatial.get("generator")
        num_prompts = max(len(m) for m in pos_masks)
        height, width = pos_masks[0].shape[-2:]
        max_len = self.config.max_spatial_len

        def sample(masks: Tensor, limit: int) -> tuple[Tensor, Tensor]:
            return _sample_points(masks, limit, height, width, generator, mask_features.device)

        mean_pos = self._mean_prompt_embeddings(
            [sample(m, max_len[-1]) for m in pos_masks], mask_features, num_prompts
        )
        mean_neg = self._mean_prompt_embeddings(
            [sample(m, max_len[-1]) for m in neg_masks], mask_features, num_prompts
        )

        tokens, token_padding, token_groups = [], [], []
        for level, (h, w) in enumerate(sizes):
            channels = src[level].shape[-1]
            projected = (src[level].reshape(h, w, batch, channels) @ self.mask_sptial_embed[level]).permute(
                2, 3, 0, 1
            )
            per_image = []
            for b in range(batch):
                pos_idx, pos_yx = sample(pos_masks[b], max_len[level])
                neg_idx, neg_yx = sample(neg_masks[b], max_len[level])
                feats = _point_sample(projected[b], torch.cat([pos_yx, neg_yx]))
                indicator = torch.cat(
                    [
                        self.pn_indicator.weight[0].expand(len(pos_idx), -1),
                        self.pn_indicator.weight[1].expand(len(neg_idx), -1),
                    ]
                )
                per_image.append((feats + indicator, torch.cat([pos_idx, neg_idx])))
            length = max(len(idx) for _, idx in per_image)
            level_tokens = projected.new_zeros(length, batch, channels)
            level_groups = torch.full((batch, length), -1, dtype=torch.long, device=projected.device)
            for b, (feats, idx) in enumerate(per_image):
                level_tokens[: len(idx), b] = feats
                level_groups[b, : len(idx)] = idx
            tokens.append(level_tokens)
            token_groups.append(level_groups)
            token_padding.append(level_groups < 0)

        prev_mask = spatial.get("prev_mask")
        if prev_mask is not None and (prev_mask.dim() != 4 or prev_mask.shape[:2] != (batch, num_prompts)):
            raise ValueError(
                f"SEEMDecoder: spatial['prev_mask'] must be [{batch}, {num_prompts}, h, w] (one mask per prompt), "
                f"got {tuple(prev_mask.shape)}."
            )
        return _Prompts(
            num_prompts, mean_pos, mean_neg, tokens, token_padding, token_groups, prev_mask, generator
        )

    @staticmethod
    def _mean_prompt_embeddings(
        samples: list[tuple[Tensor, Tensor]], mask_features: Tensor, num_prompts: int
    ) -> Tensor:
        """Per image and prompt, the mean of ``mask_features`` at its points; ``-1`` vectors for prompts without
        points (and for padding prompts). Returns ``[B, n, C]``."""
        channels = mask_features.shape[1]
        means = []
        for b, (idx, yx) in enumerate(samples):
            feats = _point_sample(mask_features[b], yx)
            sums = feats.new_zeros(num_prompts, channels).index_add(0, idx, feats)
            counts = torch.bincount(idx, minlength=num_prompts)[:, None]
            means.append(torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, -1.0)))
        return torch.stack(means)


# ---------------------------------------------------------------------- helpers


def _lengths(outputs: dict[str, Tensor]) -> dict[str, int]:
    return {name: value.shape[0] for name, value in outputs.items()}


def _gather(
    outputs: dict[str, Tensor], positions: dict[str, Tensor], ranges: dict[str, slice]
) -> tuple[Tensor, Tensor]:
    names = list(ranges)
    return torch.cat([outputs[n] for n in names]), torch.cat([positions[n] for n in names])


def _scatter(sequence: Tensor, outputs: dict[str, Tensor], ranges: dict[str, slice]) -> None:
    for name, span in ranges.items():
        outputs[name] = sequence[span]


def _generator_device(generator: torch.Generator | None, default: torch.device) -> torch.device:
    return generator.device if generator is not None else default


def _point_sample(features: Tensor, yx: Tensor) -> Tensor:
    """Bilinear samples (``align_corners=True``) of ``features [C, H, W]`` at ``yx [P, 2]`` in ``[0, 1]``: ``[P, C]``."""
    grid = (2.0 * yx.flip(-1).to(features.dtype) - 1.0)[None, :, None, :]
    return F.grid_sample(features[None], grid, align_corners=True)[0, :, :, 0].t()


def _sample_points(
    masks: Tensor,
    limit: int,
    height: int,
    width: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Up to ``limit`` foreground points of ``masks [n, H, W]``, without replacement, every non-empty mask getting
    the same total probability. Returns ``(prompt index [P] long, (y/H, x/W) [P, 2] float)`` sorted by position.

    Uses Gumbel top-k (the same distribution as sequential weighted sampling without replacement) so it works for
    any number of foreground pixels.
    """
    points = masks.nonzero()
    if len(points) == 0 or limit <= 0:
        return torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, 2, device=device)
    counts = torch.bincount(points[:, 0], minlength=masks.shape[0])
    weights = 1.0 / ((counts > 0).sum() * counts[points[:, 0]]).double()
    sample_device = _generator_device(generator, points.device)
    uniform = torch.rand(len(points), generator=generator, device=sample_device, dtype=torch.float64).to(
        points.device
    )
    keys = weights.log() - (-uniform.clamp_min(1e-300).log()).log()
    chosen = keys.topk(min(limit, len(points))).indices.sort().values
    points = points[chosen].to(device)
    scale = torch.tensor([height, width], device=device, dtype=torch.float32)
    return points[:, 0], points[:, 1:].float() / scale
