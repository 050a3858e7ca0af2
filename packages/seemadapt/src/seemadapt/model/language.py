"""SEEM's language encoder: a causal CLIP-style text transformer, its projection and the class-text classifier.

State-dict names equal the official ones below ``sem_seg_head.predictor.lang_encoder.``: ``lang_encoder.*`` (the
transformer), ``lang_proj`` ``[width, dim_proj]`` and ``logit_scale`` ``[]``.

Two facts make text encoding cheap without changing any number:

* The transformer is causal and pools at the first EOT, so tokens after a prompt's EOT never influence it. Each
  batch therefore runs only up to its longest prompt (prompts sorted by length), not the 77-token context.
* In SEEM the encoder is frozen, so a prompt's embedding is a constant. Class prompts (every class x all 81
  templates) are encoded once and kept in a cache; evaluation averages them, training draws one template per class
  per step from them.

Cache rule: entries are valid for one exact set of weights. Every lookup compares a fingerprint of the encoder's
parameters (storage pointer, in-place version counter, dtype, device) with the one the cache was filled under and
empties the cache on any difference, so ``load_state_dict``, optimizer steps, ``.to(...)`` and in-place edits all
invalidate it. Evaluation embeddings are computed without autograd (as in the official code) and always cached;
training embeddings skip the cache when they need an autograd graph (some encoder parameter requires grad and grad
mode is on), so freeze the encoder (``requires_grad_(False)``, as SEEM does) to train from the cache.
``train()``/``eval()`` change nothing (no dropout), so they keep the cache. ``use_cache=False`` turns it off.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LanguageConfig
from .templates import (
    PROMPT_TEMPLATES,
    Rng,
    clean_class_name,
    draw_template_index,
    training_class_text,
    with_background,
)
from .tokenizer import SEEMTokenizer, TokenizedText

NORM_EPS = 1e-7  # SEEM's x / (|x| + eps) normalisation of embeddings
MAX_LOGIT_SCALE = 100.0  # clamp of exp(logit_scale) on the grounding path

Mode = Literal["train", "eval"]


def l2_normalize(x: Tensor) -> Tensor:
    """``x / (|x| + 1e-7)`` along the last dimension, as SEEM normalises text and visual embeddings."""
    return x / (x.norm(dim=-1, keepdim=True) + NORM_EPS)


def require_nonzero(embeddings: Tensor, prompts: Sequence[str]) -> Tensor:
    """``embeddings`` unchanged, or an error naming the prompt whose embedding is exactly zero.

    A trained encoder never gives zero; the ``tiny`` preset's class-word initialisation does for a class name made
    only of prompt-template words (its embeddings are silenced), which would otherwise train nothing and score NaN.
    """
    zero = (embeddings.detach() == 0).all(dim=-1)
    if bool(zero.any()):
        prompt = prompts[int(zero.nonzero()[0, 0])]
        raise ValueError(
            f"The text encoder gives a zero embedding for the prompt {prompt!r}: with class_word_init (the tiny "
            "preset) the prompt templates' own words are silenced, so a class name made only of them ('a', 'the', "
            "'photo', ...) has no words left. Fix: rename that class with a word of its own (e.g. 'region a')."
        )
    return embeddings


class TextEncoding(NamedTuple):
    """Token-level output: ``sentence`` ``[n, D]`` (EOT token), ``tokens`` ``[n, L, D]`` (zero where
    ``attention_mask`` is 0) and ``attention_mask`` ``[n, L]`` (1 for SOT..EOT), ``L`` = the longest text."""

    sentence: Tensor
    tokens: Tensor
    attention_mask: Tensor


class LayerNormFP32(nn.Module):
    """LayerNorm computed in float32 (then cast back before the affine), with SEEM's eps of 1e-12."""

    def __init__(self, width: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        normed = F.layer_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)
        return self.weight * normed + self.bias


class QuickGELU(nn.Module):
    """CLIP's GELU approximation ``x * sigmoid(1.702 x)``; the checkpoint was trained with it."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with ``nn.MultiheadAttention``'s parameter names, batch-first.

    Same maths as the official ``nn.MultiheadAttention`` with a ``-inf`` upper-triangular mask, written with
    ``scaled_dot_product_attention`` so any sequence length up to the context works without building masks.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm CLIP block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, eps: float) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(width, heads)
        self.ln_1 = LayerNormFP32(width, eps)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, 4 * width)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(4 * width, width)),
                ]
            )
        )
        self.ln_2 = LayerNormFP32(width, eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """The causal transformer (official key prefix ``lang_encoder.lang_encoder.``)."""

    def __init__(self, config: LanguageConfig) -> None:
        super().__init__()
        self.context_length = config.context_length
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(config.width, config.heads, config.layernorm_eps)
            for _ in range(config.layers)
        )
        self.ln_final = LayerNormFP32(config.width, config.layernorm_eps)

    def forward(self, input_ids: Tensor, pool_index: Tensor | None = None) -> Tensor:
        """Hidden states ``[n, L, width]`` for ``input_ids`` ``[n, L]`` (any ``L`` up to the context length);
        with ``pool_index`` ``[n]``, only the states at those positions, ``[n, width]``."""
        length = input_ids.shape[1]
        if length > self.context_length:
            raise ValueError(
                f"Text of {length} tokens exceeds LanguageConfig.context_length={self.context_length}."
            )
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        for block in self.resblocks:
            x = block(x)
        if pool_index is not None:
            x = x[torch.arange(x.shape[0], device=x.device), pool_index]
        return self.ln_final(x)


class LanguageEncoder(nn.Module):
    """SEEM's text side (``sem_seg_head.predictor.lang_encoder``): encoder, projection, classifier temperature.

    Args:
        config: geometry; ``LanguageConfig()`` is the official one (63,428,097 parameters).
        tokenizer: defaults to the offline CLIP BPE tokenizer, created on first use.
        batch_size: prompts per transformer call.
        use_cache: keep class-prompt embeddings while the weights stay the same (see the module docstring).
    """

    def __init__(
        self,
        config: LanguageConfig,
        tokenizer: SEEMTokenizer | None = None,
        batch_size: int = 512,
        use_cache: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"LanguageEncoder.batch_size must be >= 1, got {batch_size}.")
        self.config = config
        self.batch_size = batch_size
        self.use_cache = use_cache
        self.lang_encoder = TextTransformer(config)
        self.lang_proj = nn.Parameter(torch.empty(config.width, config.dim_proj))
        self.logit_scale = nn.Parameter(torch.ones([]))
        self._tokenizer = tokenizer
        self._template_bank: dict[str, Tensor] = {}  # class text -> [num templates, D] normalised embeddings
        self._eval_cache: dict[tuple[tuple[str, ...], bool], Tensor] = {}
        self._cache_key: tuple | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random initialisation as in the official code (truncated normal 0.02, xavier for in_proj)."""
        encoder = self.lang_encoder
        nn.init.trunc_normal_(encoder.token_embedding.weight, std=0.02)
        nn.init.trunc_normal_(encoder.positional_embedding, std=0.02)
        for module in encoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, CausalSelfAttention):
                nn.init.xavier_uniform_(module.in_proj_weight)
                nn.init.zeros_(module.in_proj_bias)
            elif isinstance(module, LayerNormFP32):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.lang_proj, std=0.02)
        with torch.no_grad():
            self.logit_scale.fill_(self.config.logit_scale_init)
            if self.config.class_word_init:
                self._silence_template_words()

    def _silence_template_words(self) -> None:
        """Zero the positions and the embeddings of every token the prompt templates share (start and end tokens
        included): the pooled state then comes from the class words alone (see ``LanguageConfig``)."""
        encoder = self.lang_encoder
        if encoder.token_embedding.weight.is_meta:  # shapes only: nothing to initialise
            return
        ids = self.tokenize([template.format("") for template in PROMPT_TEMPLATES]).input_ids
        encoder.positional_embedding.zero_()
        encoder.token_embedding.weight[torch.unique(ids)] = 0.0

    # ------------------------------------------------------------------ tokenizer and caches

    @property
    def tokenizer(self) -> SEEMTokenizer:
        if self._tokenizer is None:
            self._tokenizer = SEEMTokenizer.from_pretrained(None, context_length=self.config.context_length)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: SEEMTokenizer) -> None:
        self._tokenizer = tokenizer
        self.clear_cache()

    def clear_cache(self) -> None:
        """Forget every cached prompt and class embedding."""
        self._template_bank.clear()
        self._eval_cache.clear()
        self._cache_key = None

    def _encoding_parameters(self) -> list[Tensor]:
        return [*self.lang_encoder.parameters(), self.lang_proj]

    def _cache_usable(self) -> bool:
        """Whether caching is on; first empties the cache if the weights changed since it was filled."""
        if not self.use_cache:
            return False
        # _version: the tensor's in-place write counter (torch exposes no public one), so an optimizer step shows
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self._encoding_parameters())
        if key != self._cache_key:
            self.clear_cache()
            self._cache_key = key
        return True

    def _needs_graph(self) -> bool:
        """True when embeddings must carry autograd graphs (a trainable encoder under grad mode)."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self._encoding_parameters())

    @property
    def device(self) -> torch.device:
        return self.lang_proj.device

    # ------------------------------------------------------------------ encoding

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, normalize: bool = False
    ) -> TextEncoding:
        """Token-level encoding (the grounding path): every token and the EOT token, projected by ``lang_proj``.

        Runs up to the longest text only; ``tokens`` and ``attention_mask`` have that length. Positions after a
        text's EOT are set to zero: they are padding, which the official code computes and then discards.
        """
        input_ids = self._check_ids(input_ids)
        pool = input_ids.argmax(
            dim=-1
        )  # first EOT: EOT is the largest id and argmax returns the first maximum
        length = int(pool.max()) + 1
        positions = torch.arange(length, device=input_ids.device)
        mask = (positions.unsqueeze(0) <= pool.unsqueeze(1)).long()
        if attention_mask is not None:
            mask = mask * attention_mask[:, :length].to(mask)
        pieces = []
        for chunk in torch.arange(input_ids.shape[0], device=input_ids.device).split(self.batch_size):
            chunk_length = int(pool[chunk].max()) + 1
            hidden = self.lang_encoder(input_ids[chunk, :chunk_length])
            pieces.append(F.pad(hidden, (0, 0, 0, length - chunk_length)))
        tokens = (torch.cat(pieces) @ self.lang_proj) * mask.unsqueeze(-1).to(self.lang_proj.dtype)
        sentence = tokens[torch.arange(tokens.shape[0], device=tokens.device), pool]
        if normalize:
            sentence, tokens = l2_normalize(sentence), l2_normalize(tokens)
        return TextEncoding(sentence, tokens, mask)

    def encode_ids(self, input_ids: Tensor, normalize: bool = True, trim: bool = True) -> Tensor:
        """Sentence embeddings ``[n, D]`` (EOT hidden state @ ``lang_proj``) of tokenized texts.

        ``trim=True`` sorts the texts by length and runs each batch only up to its longest text; ``trim=False``
        runs all ``L`` positions (the official computation, kept for comparisons). Both give the same numbers.
        """
        input_ids = self._check_ids(input_ids)
        pool = input_ids.argmax(dim=-1)
        count = input_ids.shape[0]
        if trim:
            order = torch.argsort(pool, stable=True)
        else:
            order = torch.arange(count, device=input_ids.device)
        pieces = []
        for chunk in order.split(self.batch_size):
            length = int(pool[chunk].max()) + 1 if trim else input_ids.shape[1]
            pieces.append(self.lang_encoder(input_ids[chunk, :length], pool_index=pool[chunk]))
        embeddings = torch.cat(pieces) @ self.lang_proj
        if trim:
            embeddings = embeddings[torch.argsort(order)]
        return l2_normalize(embeddings) if normalize else embeddings

    def tokenize(
        self, texts: str | Sequence[str], padding: Literal["max_length", "longest"] = "longest"
    ) -> TokenizedText:
        """Tokenize with this encoder's tokenizer and context length, onto the encoder's device."""
        return self.tokenizer(texts, padding=padding, context_length=self.config.context_length).to(
            self.device
        )

    def encode(
        self, texts: str | Sequence[str], normalize: bool = True, token_level: bool = False
    ) -> Tensor | TextEncoding:
        """Encode raw texts: sentence embeddings ``[n, D]``, or with ``token_level=True`` a :class:`TextEncoding`
        (use ``normalize=False`` there, as SEEM's grounding path does)."""
        tokens = self.tokenize(texts)
        if token_level:
            return self(tokens.input_ids, tokens.attention_mask, normalize=normalize)
        return self.encode_ids(tokens.input_ids, normalize=normalize)

    def _check_ids(self, input_ids: Tensor) -> Tensor:
        if input_ids.dim() != 2 or input_ids.shape[0] == 0:
            raise ValueError(f"input_ids must be [n, L] with n >= 1, got shape {tuple(input_ids.shape)}.")
        if int(input_ids.max()) >= self.config.vocab_size or int(input_ids.min()) < 0:
            raise ValueError(
                f"Token ids must lie in [0, LanguageConfig.vocab_size={self.config.vocab_size}); got "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]. Is the tokenizer the one the encoder was built for?"
            )
        return input_ids.to(self.device)

    # ------------------------------------------------------------------ class embeddings

    def template_embeddings(self, class_texts: Sequence[str]) -> list[Tensor]:
        """Normalised embeddings of every template filled with each class text, one ``[81, D]`` tensor per text.

        Texts are used as given (already cleaned). Computed without autograd; cached while the weights stay the
        same.
        """
        bank = self._template_bank if self._cache_usable() else {}
        missing = list(dict.fromkeys(text for text in class_texts if text not in bank))
        if missing:
            prompts = [template.format(text) for text in missing for template in PROMPT_TEMPLATES]
            # Full precision even inside a caller's autocast region: the bank is cached and reused everywhere.
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                embeddings = self.encode_ids(self.tokenize(prompts).input_ids, normalize=True)
            require_nonzero(embeddings, prompts)
            bank.update(zip(missing, embeddings.split(len(PROMPT_TEMPLATES))))
        return [bank[text] for text in class_texts]

    def class_embeddings(
        self, class_names: Sequence[str], mode: Mode = "eval", rng: Rng = None, add_background: bool = True
    ) -> Tensor:
        """The classifier's text embeddings ``[K+1, D]`` for ``class_names + ["background"]``.

        ``eval``: per class, the mean of the 81 normalised template embeddings, renormalised (cached per class
        list). ``train``: one template per class drawn from ``rng`` (in class order), its normalised embedding,
        read from the template cache when possible, else encoded with autograd.
        """
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}.")
        names = with_background(class_names) if add_background else list(class_names)
        if not names:
            raise ValueError("class_embeddings needs at least one class name.")
        if mode == "eval":
            key = (tuple(names), add_background)
            cache = self._cache_usable()
            if cache and key in self._eval_cache:
                return self._eval_cache[key]
            with torch.no_grad():  # evaluation embeddings are constants, as in the official code
                banks = self.template_embeddings([clean_class_name(name) for name in names])
                means = torch.stack([bank.mean(dim=0) for bank in banks])
                embeddings = means / means.norm(dim=-1, keepdim=True)
            if cache:
                self._eval_cache[key] = embeddings
            return embeddings
        texts = [training_class_text(name) for name in names]
        indices = [draw_template_index(rng) for _ in texts]
        if not self._needs_graph() and self._cache_usable():
            banks = self.template_embeddings(texts)
            return torch.stack([bank[index] for bank, index in zip(banks, indices)])
        prompts = [PROMPT_TEMPLATES[index].format(text) for text, index in zip(texts, indices)]
        return require_nonzero(self.encode(prompts, normalize=True), prompts)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ similarity

    def similarity(
        self, visual: Tensor, text: Tensor, clamp: bool = False, normalize_text: bool = True
    ) -> Tensor:
        """Classification logits ``exp(logit_scale) * normalise(visual) @ normalise(text).T``, shape ``[..., K]``.

        ``clamp=True`` caps the scale at 100 (the grounding path). Class embeddings from
        :meth:`class_embeddings` are already unit length; ``normalize_text=False`` uses them as they are, exactly
        as the official classifier does.
        """
        if visual.shape[-1] != text.shape[-1]:
            raise ValueError(
                f"visual [..., {visual.shape[-1]}] and text [K, {text.shape[-1]}] differ in size."
            )
        scale = self.logit_scale.exp()
        if clamp:
            scale = scale.clamp(max=MAX_LOGIT_SCALE)
        text = l2_normalize(text) if normalize_text else text
        # Cached class embeddings may come from an autocast (bf16/fp16) region while the visual side does not,
        # or the reverse: compute in the visual side's dtype.
        return scale * (l2_normalize(visual) @ text.to(visual.dtype).transpose(-1, -2))

    def extra_repr(self) -> str:
        c = self.config
        return f"width={c.width}, layers={c.layers}, heads={c.heads}, dim_proj={c.dim_proj}, context={c.context_length}"
