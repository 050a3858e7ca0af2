"""SEEM v1 decoder: official geometry, forward contracts, attention rules, prompts and adapter hooks."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

import seemadapt.model.decoder as decoder_module
from seemadapt.model.attention_layout import SEEM_V1_VARIABLES, AttentionLayout
from seemadapt.model.config import focall_config, focalt_config, tiny_config
from seemadapt.model.decoder import SEEMDecoder
from seemadapt.model.decoder_layers import Attention

RESEARCH = Path(__file__).resolve().parent / "data"  # copies of shared/research/seem_focal{t,l}_v1_keys.txt
PREFIX = "sem_seg_head.predictor."
INTERACTIVE = ("mask_sptial_embed.", "spatial_embed.", "spatial_featured.", "pn_indicator.")
EXACT = {"rtol": 0.0, "atol": 1e-12}  # float64 comparisons: equal up to rounding
CLOSE = {"rtol": 0.0, "atol": 1e-5}


def official_shapes(filename: str) -> dict[str, tuple[int, ...]]:
    path = RESEARCH / filename
    shapes = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or not line.startswith(PREFIX):
            continue
        name, dims = line.split(" ", 1)
        shapes[name[len(PREFIX) :]] = tuple(int(d) for d in dims.strip("[]").split(",") if d.strip())
    return shapes


@pytest.mark.parametrize(
    ("make_config", "filename"),
    [(focalt_config, "seem_focalt_v1_keys.txt"), (focall_config, "seem_focall_v1_keys.txt")],
)
def test_full_size_keys_match_official_checkpoint(make_config, filename):
    config = make_config()
    with torch.device("meta"):
        decoder = SEEMDecoder(config.decoder, config.language)
    state = decoder.state_dict()
    ours = {name: tuple(t.shape) for name, t in state.items() if not name.startswith("lang_encoder.")}
    official = {
        name: shape
        for name, shape in official_shapes(filename).items()
        if not name.startswith("lang_encoder.")
    }
    assert ours == official
    assert any(name.startswith("lang_encoder.lang_encoder.") for name in state)
    assert {"lang_encoder.lang_proj", "lang_encoder.logit_scale"} <= set(state)
    params = {n: p.numel() for n, p in decoder.named_parameters() if not n.startswith("lang_encoder.")}
    assert sum(params.values()) == 39_812_608
    assert sum(v for n, v in params.items() if n.startswith(INTERACTIVE)) == 820_224


# ---------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def decoder32() -> SEEMDecoder:
    torch.manual_seed(0)
    config = tiny_config()
    return SEEMDecoder(config.decoder, config.language)


@pytest.fixture(scope="module")
def decoder64(decoder32) -> SEEMDecoder:
    return copy.deepcopy(decoder32).double().eval()


def inputs(dtype=torch.float32, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = [torch.randn(batch, 64, s, s, generator=generator, dtype=dtype) for s in (2, 4, 8)]
    mask_features = torch.randn(batch, 64, 16, 16, generator=generator, dtype=dtype)
    classes = torch.randn(6, 64, generator=generator, dtype=dtype)
    return features, mask_features, classes


def grounding(dtype=torch.float64, seed: int = 1):
    """Image 0 has 3 real tokens and 2 padded ones; image 1 has 5 real tokens. Padded vectors are zero."""
    tokens = torch.randn(5, 2, 64, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    padding = torch.tensor([[False, False, False, True, True], [False] * 5])
    tokens[3:, 0] = 0.0
    return tokens, padding


def predictions(out: dict) -> list[dict]:
    return [*out["aux_outputs"], {k: v for k, v in out.items() if k != "aux_outputs"}]


def test_tiny_seg_forward_shapes_and_backward(decoder32):
    features, mask_features, classes = inputs()
    decoder32.zero_grad()
    out = decoder32(features, mask_features, classes)
    assert set(out) == {"pred_logits", "pred_masks", "aux_outputs"}
    assert out["pred_logits"].shape == (2, 8, 6)
    assert out["pred_masks"].shape == (2, 8, 16, 16)
    assert len(out["aux_outputs"]) == tiny_config().decoder.dec_layers - 1
    for prediction in predictions(out):
        assert set(prediction) == {"pred_logits", "pred_masks"}
        assert all(torch.isfinite(v).all() for v in prediction.values())
    loss = sum(
        p["pred_logits"].logsumexp(-1).mean() + p["pred_masks"].sigmoid().mean() for p in predictions(out)
    )
    loss.backward()
    for name in (
        "query_feat.weight",
        "query_embed.weight",
        "level_embed.weight",
        "class_embed",
        "decoder_norm.weight",
        "mask_embed.layers.0.weight",
        "transformer_cross_attention_layers.2.multihead_attn.in_proj_weight",
        "transformer_self_attention_layers.2.self_attn.out_proj.weight",
        "transformer_ffn_layers.2.linear1.weight",
    ):
        grad = decoder32.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert decoder32.pn_indicator.weight.grad is None  # the interactive branch did not run
    decoder32.zero_grad()


def test_grounding_outputs_padding_and_batch_independence(decoder64):
    features, mask_features, classes = inputs(torch.float64)
    tokens, padding = grounding()
    with torch.no_grad():
        out = decoder64(features, mask_features, classes, tokens, padding)
        for prediction in predictions(out):
            assert prediction["pred_gmasks"].shape == (2, 8, 16, 16)
            assert prediction["pred_gtexts"].shape == (2, 8, 64)
            assert prediction["pred_captions"].shape == (2, 8, 64)
            for key, value in prediction.items():
                assert torch.isfinite(value).all(), key

        # Image 1's tokens do not leak into image 0.
        other = tokens.clone()
        other[:, 1] = torch.randn(5, 64, dtype=torch.float64)
        changed = decoder64(features, mask_features, classes, other, padding)
        for a, b in zip(predictions(out), predictions(changed)):
            for key in a:
                torch.testing.assert_close(a[key][0], b[key][0], **EXACT)
        assert not torch.allclose(out["pred_gmasks"][1], changed["pred_gmasks"][1])

        # Padded tokens are ignored: changing their values or adding more padding changes nothing.
        noisy = tokens.clone()
        noisy[3:, 0] = 100.0
        longer = torch.cat([noisy, torch.randn(2, 2, 64, dtype=torch.float64)])
        longer_padding = torch.cat([padding, torch.ones(2, 2, dtype=torch.bool)], dim=1)
        for variant in (
            decoder64(features, mask_features, classes, noisy, padding),
            decoder64(features, mask_features, classes, longer, longer_padding),
        ):
            for a, b in zip(predictions(out), predictions(variant)):
                for key in a:
                    torch.testing.assert_close(a[key], b[key], **EXACT)


def test_grounding_queries_start_as_copies_of_object_queries(decoder64):
    features, mask_features, classes = inputs(torch.float64)
    tokens, padding = grounding()
    with torch.no_grad():
        out = decoder64(features, mask_features, classes, tokens, padding)
    first = out["aux_outputs"][0]  # the prediction on the initial queries
    torch.testing.assert_close(first["pred_gmasks"], first["pred_masks"], **EXACT)
    torch.testing.assert_close(first["pred_gtexts"], first["pred_captions"], **EXACT)
    assert not torch.allclose(out["pred_gmasks"], out["pred_masks"])  # they diverge once the tokens are seen


def test_object_queries_never_see_grounding_information(decoder64):
    features, mask_features, classes = inputs(torch.float64)
    tokens, padding = grounding()
    with torch.no_grad():
        plain = decoder64(features, mask_features, classes)
        with_text = decoder64(features, mask_features, classes, tokens, padding)
        for a, b in zip(predictions(plain), predictions(with_text)):
            torch.testing.assert_close(a["pred_logits"], b["pred_logits"], **EXACT)
            torch.testing.assert_close(a["pred_masks"], b["pred_masks"], **EXACT)

        # The check can fail: a layout that lets object queries read the text tokens changes their outputs.
        leaky = [
            dataclasses.replace(spec, partners=(*spec.partners, "tokens_grounding"))
            if spec.name == "queries_object"
            else spec
            for spec in SEEM_V1_VARIABLES
        ]
        model = copy.deepcopy(decoder64)
        model.layout = AttentionLayout(leaky)
        leaked = model(features, mask_features, classes, tokens, padding)
        assert (leaked["pred_masks"] - plain["pred_masks"]).abs().max() > 1e-4


def spatial_prompts():
    """Image 0: two prompts; image 1: one prompt (so prompt 1 of image 1 is padding). Masks are 60x60.

    Every image has at most 16 (= max_spatial_len) points per polarity, so every point is used."""
    masks0 = torch.zeros(2, 60, 60, dtype=torch.bool)
    masks0[0, 0, 0] = True
    masks0[0, 8, 4] = True
    masks0[1, 20:23, 12:15] = True
    masks1 = torch.zeros(1, 60, 60, dtype=torch.bool)
    masks1[0, 4, 8] = True
    negatives = [torch.zeros(2, 60, 60, dtype=torch.bool), torch.zeros(1, 60, 60, dtype=torch.bool)]
    negatives[0][1, 56, 52] = True
    return [masks0, masks1], negatives


def test_spatial_prompt_embeddings_are_means_at_the_points(decoder64):
    features, mask_features, classes = inputs(torch.float64)
    positives, negatives = spatial_prompts()
    spatial = {"pos_masks": positives, "neg_masks": negatives, "generator": torch.Generator().manual_seed(0)}
    with torch.no_grad():
        out = decoder64(features, mask_features, classes, spatial=spatial)
    # 60x60 masks on a 16x16 map with align_corners=True: pixel (y, x) lands on feature (y / 4, x / 4).
    # (Point coordinates are float32, as in the official code, hence the float32-level tolerance.)
    pos = out["pred_pspatials"]
    assert pos.shape == (2, 2, 64)
    torch.testing.assert_close(
        pos[0, 0], (mask_features[0, :, 0, 0] + mask_features[0, :, 2, 1]) / 2, **CLOSE
    )
    torch.testing.assert_close(pos[1, 0], mask_features[1, :, 1, 2], **CLOSE)
    assert torch.equal(pos[1, 1], torch.full((64,), -1.0, dtype=torch.float64))  # padding prompt
    neg = out["pred_nspatials"]
    assert torch.equal(neg[0, 0], torch.full((64,), -1.0, dtype=torch.float64))  # prompt without negatives
    torch.testing.assert_close(neg[0, 1], mask_features[0, :, 14, 13], **CLOSE)
    assert out["pred_smasks"].shape == (2, 4, 16, 16)  # query_number (2) x 2 prompts
    assert out["pred_smaskembs"].shape == (2, 4, 64)
    assert out["pred_stexts"].shape == (2, 4, 64)


def test_spatial_branch_is_deterministic_and_does_not_touch_object_queries(decoder64):
    features, mask_features, classes = inputs(torch.float64)
    positives, negatives = spatial_prompts()

    def run(seed: int):
        spatial = {
            "pos_masks": positives,
            "neg_masks": negatives,
            "generator": torch.Generator().manual_seed(seed),
        }
        with torch.no_grad():
            return decoder64(features, mask_features, classes, spatial=spatial)

    first, again = run(0), run(0)
    for a, b in zip(predictions(first), predictions(again)):
        for key in a:
            assert torch.equal(a[key], b[key]), key
    with torch.no_grad():
        plain = decoder64(features, mask_features, classes)
    for a, b in zip(predictions(plain), predictions(first)):
        torch.testing.assert_close(a["pred_masks"], b["pred_masks"], **EXACT)
        torch.testing.assert_close(a["pred_logits"], b["pred_logits"], **EXACT)


def test_spatial_task_returns_best_query_mask_and_feeds_memories(decoder32):
    features, mask_features, classes = inputs()
    positives, negatives = spatial_prompts()
    spatial = {"pos_masks": positives, "neg_masks": negatives, "generator": torch.Generator().manual_seed(0)}
    with torch.no_grad():
        prev = decoder32(features, mask_features, classes, spatial=spatial, task="spatial")
        full = decoder32(
            features,
            mask_features,
            classes,
            spatial={**spatial, "generator": torch.Generator().manual_seed(0)},
        )
    assert set(prev) == {"prev_mask"}
    prev_mask = prev["prev_mask"]
    assert prev_mask.shape == (2, 2, 16, 16)
    scores = full["pred_smaskembs"] @ full["pred_pspatials"].transpose(1, 2)  # [B, 4, 2]
    for b in range(2):
        for k in range(2):
            own = [2 * k, 2 * k + 1]  # query_number = 2 queries per prompt, laid out prompt by prompt
            best = own[int(scores[b, own, k].argmax())]
            assert torch.equal(prev_mask[b, k], full["pred_smasks"][b, best])

    decoder32.zero_grad()
    spatial = {**spatial, "prev_mask": prev_mask, "generator": torch.Generator().manual_seed(1)}
    out = decoder32(features, mask_features, classes, spatial=spatial)
    for prediction in predictions(out):
        assert all(torch.isfinite(v).all() for v in prediction.values())
    (out["pred_smasks"].sigmoid().mean() + out["pred_logits"].mean()).backward()
    for name in (
        "pn_indicator.weight",
        "mask_sptial_embed.0",
        "mask_sptial_embed.2",
        "spatial_featured.weight",
        "spatial_embed.weight",
    ):
        grad = decoder32.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    decoder32.zero_grad()


def test_point_sampling_is_balanced_across_prompts():
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[0, 3, 5] = True  # one pixel
    masks[1, :15, :20] = True  # 300 pixels
    hits = 0
    for seed in range(200):
        idx, yx = decoder_module._sample_points(
            masks, 2, 20, 20, torch.Generator().manual_seed(seed), torch.device("cpu")
        )
        assert idx.shape == (2,) and yx.shape == (2, 2)
        pixels = (yx * 20).round().long()
        assert masks[idx, pixels[:, 0], pixels[:, 1]].all()  # sampled points lie in their own mask
        assert len({tuple(p) for p in pixels.tolist()}) == 2  # without replacement
        hits += int((idx == 0).any())
    # Balanced: the single pixel holds half the probability (~75% over two draws); by area it would be ~0.7%.
    assert hits > 100
    idx, yx = decoder_module._sample_points(masks[:0], 5, 20, 20, None, torch.device("cpu"))
    assert idx.shape == (0,) and yx.shape == (0, 2)


# ---------------------------------------------------------------------------- attention rules


def test_attention_matches_torch_and_zeroes_fully_blocked_rows():
    torch.manual_seed(0)
    ours = Attention(16, 4)
    reference = nn.MultiheadAttention(16, 4)
    reference.load_state_dict(ours.state_dict())
    query, key = torch.randn(3, 2, 16), torch.randn(5, 2, 16)
    mask = torch.rand(8, 3, 5) < 0.4
    mask[:, :, 0] = False  # no fully blocked row: must equal torch exactly as attention math goes
    torch.testing.assert_close(ours(query, key, key, mask), reference(query, key, key, attn_mask=mask)[0])

    mask[:, 1] = True  # query 1 blocks every key, in every head of every image
    query.requires_grad_(True)
    out = ours(query, key, key, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], ours.out_proj.bias.expand(2, -1))  # zero attention -> only the bias
    out.sum().backward()
    assert torch.isfinite(query.grad).all()
    assert torch.equal(query.grad[1], torch.zeros(2, 16))


@pytest.mark.parametrize("key_bias_after_matmul", [False, True])
def test_attention_gradients_match_torch_with_blocked_keys(key_bias_after_matmul):
    """The mask is applied outside autograd: blocked keys must still get no gradient (softmax gives them none)."""
    torch.manual_seed(0)
    ours = Attention(16, 4, key_bias_after_matmul=key_bias_after_matmul)
    reference = nn.MultiheadAttention(16, 4)
    reference.load_state_dict(ours.state_dict())
    query, key = torch.randn(3, 2, 16), torch.randn(5, 2, 16)
    mask = torch.rand(8, 3, 5) < 0.5
    mask[:, :, 0] = False
    grads = []
    for module in (ours, reference):
        inputs = (query.clone().requires_grad_(True), key.clone().requires_grad_(True))
        out = module(inputs[0], inputs[1], inputs[1], attn_mask=mask)
        out = out[0] if isinstance(out, tuple) else out
        grads.append(torch.autograd.grad(out.square().sum(), (*inputs, module.in_proj_weight)))
    for got, expected in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected)


def test_cross_attention_unblocks_fully_blocked_rows(decoder64, monkeypatch):
    """Predictions that are off everywhere (every row blocked) must act like predictions that are on everywhere."""
    features, _, classes = inputs(torch.float64)
    mask_features = torch.zeros(2, 64, 16, 16, dtype=torch.float64)
    mask_features[:, 0] = 1.0

    def run(model: SEEMDecoder, sign: float) -> torch.Tensor:
        last = model.mask_embed.layers[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            last.bias[0] = 10.0 * sign  # every mask logit = +-10
            return model(features, mask_features, classes)["pred_logits"]

    model = copy.deepcopy(decoder64)
    torch.testing.assert_close(run(model, -1.0), run(model, 1.0), **EXACT)
    monkeypatch.setattr(decoder_module, "unblock_full_rows", lambda mask: mask)
    assert (run(model, -1.0) - run(model, 1.0)).abs().max() > 1e-3  # without the rule the rows see nothing


# ---------------------------------------------------------------------------- adapter hooks


def linears(count: int, zero: bool, seed: int = 0) -> nn.ModuleList:
    torch.manual_seed(seed)
    modules = nn.ModuleList(nn.Linear(64, 64) for _ in range(count)).double()
    if zero:
        for module in modules:
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    return modules


HOOKS = {
    "cross_attention_adapters": 3,
    "self_attention_adapters": 3,
    "ffn_adapters": 3,
    "mask_embed_adapters": 4,
}


def test_adapters_default_to_none_and_add_no_keys(decoder32):
    for name in HOOKS:
        assert getattr(decoder32, name) is None
    assert not any("adapter" in key for key in decoder32.state_dict())
    model = copy.deepcopy(decoder32)
    model.cross_attention_adapters = nn.ModuleList(nn.Linear(64, 64) for _ in range(3))
    assert "cross_attention_adapters.2.weight" in model.state_dict()
    model.ffn_adapters = nn.ModuleList(nn.Linear(64, 64) for _ in range(2))
    with pytest.raises(ValueError, match="ffn_adapters"):
        model(*inputs())


def test_zero_adapters_leave_outputs_identical(decoder64):
    features, mask_features, classes = inputs(torch.float64)
    tokens, padding = grounding()
    model = copy.deepcopy(decoder64)
    with torch.no_grad():
        base = model(features, mask_features, classes, tokens, padding)
        for name, count in HOOKS.items():
            setattr(model, name, linears(count, zero=True))
        adapted = model(features, mask_features, classes, tokens, padding)
    for a, b in zip(predictions(base), predictions(adapted)):
        for key in a:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name", list(HOOKS))
def test_nonzero_adapter_changes_outputs(decoder64, name):
    features, mask_features, classes = inputs(torch.float64)
    model = copy.deepcopy(decoder64)
    with torch.no_grad():
        base = model(features, mask_features, classes)
        setattr(model, name, linears(HOOKS[name], zero=False))
        adapted = model(features, mask_features, classes)
    assert (adapted["pred_masks"] - base["pred_masks"]).abs().max() > 1e-6


def test_hook_indices_match_layers_and_predictions(decoder64):
    features, mask_features, classes = inputs(torch.float64)
    model = copy.deepcopy(decoder64)
    with torch.no_grad():
        base = predictions(model(features, mask_features, classes))

        # Head adapter j acts on prediction j only (0 = initial queries); class logits stay the same.
        for j in (0, 3):
            hooks = linears(4, zero=True)
            hooks[j] = linears(1, zero=False)[0]
            model.mask_embed_adapters = hooks
            out = predictions(model(features, mask_features, classes))
            assert not torch.allclose(out[j]["pred_masks"], base[j]["pred_masks"])
            torch.testing.assert_close(out[j]["pred_logits"], base[j]["pred_logits"], **EXACT)
            for earlier in range(j):
                assert torch.equal(out[earlier]["pred_masks"], base[earlier]["pred_masks"])
        model.mask_embed_adapters = None

        # A layer adapter on layer 1 leaves predictions 0 and 1 alone and changes prediction 2.
        for name in ("cross_attention_adapters", "self_attention_adapters", "ffn_adapters"):
            hooks = linears(3, zero=True)
            hooks[1] = linears(1, zero=False)[0]
            setattr(model, name, hooks)
            out = predictions(model(features, mask_features, classes))
            setattr(model, name, None)
            assert torch.equal(out[1]["pred_masks"], base[1]["pred_masks"]), name
            assert not torch.allclose(out[2]["pred_logits"], base[2]["pred_logits"]), name


# ---------------------------------------------------------------------------- validation


def test_forward_validation(decoder32):
    features, mask_features, classes = inputs()
    with pytest.raises(ValueError, match="task"):
        decoder32(features, mask_features, classes, task="refimg")
    with pytest.raises(ValueError, match="spatial"):
        decoder32(features, mask_features, classes, task="spatial")
    with pytest.raises(ValueError, match="feature levels"):
        decoder32(features[:2], mask_features, classes)
    with pytest.raises(ValueError, match="seq-first"):
        decoder32(features, mask_features, classes, torch.randn(2, 5, 64))
    positives, _ = spatial_prompts()
    with pytest.raises(ValueError, match="prev_mask"):
        decoder32(
            features,
            mask_features,
            classes,
            spatial={"pos_masks": positives, "prev_mask": torch.zeros(2, 3, 16, 16)},
        )
    with pytest.raises(ValueError, match="dim_proj"):
        config = tiny_config()
        SEEMDecoder(config.decoder, dataclasses.replace(config.language, dim_proj=32))


def test_class_embeddings_none_skips_logits(decoder32):
    features, mask_features, _ = inputs()
    with torch.no_grad():
        out = decoder32(features, mask_features, None)
    assert "pred_logits" not in out and out["pred_masks"].shape == (2, 8, 16, 16)
