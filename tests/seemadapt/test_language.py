"""Language side of SEEM: CLIP tokenizer, prompt templates, text encoder, class embeddings, caches, similarity."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seemadapt.model.config import LanguageConfig, tiny_config
from seemadapt.model.language import LanguageEncoder, LayerNormFP32, l2_normalize
from seemadapt.model.templates import (
    PROMPT_TEMPLATES,
    all_templates,
    clean_class_name,
    random_template,
    training_class_text,
)
from seemadapt.model.tokenizer import SEEMTokenizer
from segcontract import bytes_to_unicode, load_clip_bpe

DATA = Path(__file__).resolve().parent / "data"  # copies of shared/research/seem_focal{t,l}_v1_keys.txt
PREFIX = "sem_seg_head.predictor.lang_encoder."
TINY = LanguageConfig(width=32, heads=4, layers=2, dim_proj=16)  # the real 49408-token vocabulary
SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tokenizer() -> SEEMTokenizer:
    return SEEMTokenizer.from_pretrained(None)


def _tiny_encoder(tokenizer: SEEMTokenizer, seed: int = 0, **kwargs: object) -> LanguageEncoder:
    """Random weights everywhere, LayerNorm affines and logit_scale included, so every parameter matters."""
    torch.manual_seed(seed)
    encoder = LanguageEncoder(TINY, tokenizer=tokenizer, **kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, LayerNormFP32):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
        encoder.lang_encoder.positional_embedding.normal_(0.0, 0.5)
        for block in encoder.lang_encoder.resblocks:
            block.mlp.c_fc.weight.normal_(
                0.0, 0.5
            )  # activations of order 1, where QuickGELU's constant shows
    return encoder.requires_grad_(False)  # frozen, as in SEEM


@pytest.fixture
def encoder(tokenizer: SEEMTokenizer) -> LanguageEncoder:
    return _tiny_encoder(tokenizer)


# --- tokenizer ---------------------------------------------------------------------------------------------------


def test_tokenizer_ids_equal_clip(tokenizer: SEEMTokenizer) -> None:
    # Ids of Hugging Face's openai/clip-vit-base-patch32 tokenizer (e.g. its documented "a photo of a cat").
    assert tokenizer.vocab_size == 49408
    assert (tokenizer.sot_token_id, tokenizer.eot_token_id) == (SOT, EOT)
    ids = tokenizer(["a photo of a cat", "broken pipe"], padding="longest").input_ids
    assert ids[0].tolist() == [SOT, 320, 1125, 539, 320, 2368, EOT]
    assert ids[1, :4].tolist() == [SOT, 5107, 10459, EOT]
    # The ids are the vocabulary positions of the end-of-word pieces: 256 bytes, 256 bytes + "</w>", then merges.
    vocab, _ = load_clip_bpe()
    assert [vocab[w + "</w>"] for w in ("a", "photo", "of", "cat", "broken", "pipe")] == [
        320,
        1125,
        539,
        2368,
        5107,
        10459,
    ]
    assert vocab["a</w>"] == 256 + list(bytes_to_unicode().values()).index("a")


@pytest.mark.parametrize(
    "text",
    [
        "Hello, World!! it's   a dog's life",
        "wall-other-merged",
        "a photo of the hard to see traffic light.",
        "42 cats",
    ],
)
def test_tokenizer_agrees_with_open_clip(tokenizer: SEEMTokenizer, text: str) -> None:
    from open_clip.tokenizer import SimpleTokenizer  # an independent implementation over the same BPE file

    ours = tokenizer(text, padding="longest").input_ids[0].tolist()
    assert ours == [SOT, *SimpleTokenizer().encode(text), EOT]


def test_padding_and_attention_mask(tokenizer: SEEMTokenizer) -> None:
    full = tokenizer(["a cat", "a photo of a dog"])
    assert full.input_ids.shape == full.attention_mask.shape == (2, 77)
    assert full.attention_mask[0].tolist() == [1] * 4 + [0] * 73  # SOT a cat EOT
    assert full.lengths.tolist() == [4, 7]
    assert (full.input_ids[0, 3:] == EOT).all()  # padded with the EOT id, like Hugging Face
    longest = tokenizer(["a cat", "a photo of a dog"], padding="longest")
    assert longest.input_ids.shape == (2, 7)
    assert torch.equal(longest.input_ids, full.input_ids[:, :7])
    assert torch.equal(longest.attention_mask, full.attention_mask[:, :7])


def test_truncation_keeps_eot_last(tokenizer: SEEMTokenizer) -> None:
    out = tokenizer("dog " * 200)
    assert out.input_ids.shape == (1, 77)
    assert out.input_ids[0, 0] == SOT and out.input_ids[0, -1] == EOT
    assert (out.input_ids[0, 1:-1] == out.input_ids[0, 1]).all()
    assert out.attention_mask.sum() == 77
    assert tokenizer("dog " * 200, context_length=10).input_ids.shape == (1, 10)


def test_tokenizer_folder_round_trip(tokenizer: SEEMTokenizer, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = SEEMTokenizer.from_pretrained(tmp_path)
    texts = ["a photo of a cat", "broken pipe", "sky-other-merged, 3 trees"]
    assert torch.equal(loaded(texts).input_ids, tokenizer(texts).input_ids)
    with pytest.raises(ValueError, match="padding"):
        tokenizer("x", padding="do_not_pad")  # type: ignore[arg-type]


# --- templates ---------------------------------------------------------------------------------------------------


def test_templates_are_seems_81() -> None:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES  # CLIP's 80 ImageNet prompts

    clip = [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]
    assert len(PROMPT_TEMPLATES) == 81 and len(set(PROMPT_TEMPLATES)) == 81
    assert PROMPT_TEMPLATES[:3] == ("{}.", "a photo of a {}.", "a bad photo of a {}.")
    # SEEM = "{}." + CLIP's list with "a photo of a {}." moved to the front.
    assert list(PROMPT_TEMPLATES[2:]) == [t for t in clip if t != "a photo of a {}."]
    assert all(t.count("{}") == 1 for t in PROMPT_TEMPLATES)


def test_class_name_cleaning() -> None:
    assert clean_class_name("wall-other-merged") == "wall"
    assert clean_class_name("door-stuff") == "door"
    assert clean_class_name("traffic light") == "traffic light"
    assert training_class_text("salt,pepper+shaker-merged") == "saltpepper shaker"
    assert all_templates("tree-merged")[:2] == ["tree.", "a photo of a tree."]
    assert len(all_templates("cat")) == 81


def test_random_template_is_seeded() -> None:
    draws = [random_template("sky-other-merged", random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1] and "sky" in draws[0] and "-" not in draws[0]
    rng = np.random.default_rng(0)
    many = {random_template("cat", rng) for _ in range(300)}
    assert len(many) > 60  # uniform over 81 templates
    with pytest.raises(TypeError, match="rng"):
        random_template("cat", rng=42)  # type: ignore[arg-type]


# --- encoder geometry --------------------------------------------------------------------------------------------


def test_state_dict_matches_official_checkpoint() -> None:
    expected: dict[str, tuple[int, ...]] = {}
    for line in (DATA / "seem_focalt_v1_keys.txt").read_text().splitlines():
        if line.startswith("#") or not line.startswith(PREFIX):
            continue
        name, shape = line.split(" ", 1)
        dims = shape.strip().removeprefix("[").removesuffix("]")
        expected[name.removeprefix(PREFIX)] = tuple(int(d) for d in dims.split(",") if d.strip())
    with torch.device("meta"):
        model = LanguageEncoder(LanguageConfig())
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert len(expected) == 150
    assert ours == expected
    assert sum(p.numel() for p in model.parameters()) == 63_428_097


# --- encoder semantics -------------------------------------------------------------------------------------------


def _official_hidden(encoder: LanguageEncoder, input_ids: torch.Tensor) -> torch.Tensor:
    """The official computation: seq-first nn.MultiheadAttention with a -inf causal mask over all positions,
    TF-style LayerNorm (eps inside the root) and QuickGELU."""
    text = encoder.lang_encoder
    length = input_ids.shape[1]

    def layer_norm(x: torch.Tensor, ln: nn.Module) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        return ln.weight * (x - mean) / torch.sqrt(var + 1e-12) + ln.bias

    mask = torch.full((length, length), float("-inf")).triu(1)
    x = (text.token_embedding(input_ids) + text.positional_embedding[:length]).permute(1, 0, 2)
    for block in text.resblocks:
        mha = nn.MultiheadAttention(TINY.width, TINY.heads)
        mha.load_state_dict(block.attn.state_dict())
        x = x + mha(*[layer_norm(x, block.ln_1)] * 3, attn_mask=mask, need_weights=False)[0]
        h = block.mlp.c_fc(layer_norm(x, block.ln_2))
        x = x + block.mlp.c_proj(h * torch.sigmoid(1.702 * h))
    return layer_norm(x.permute(1, 0, 2), text.ln_final)


def test_matches_official_formulation(encoder: LanguageEncoder) -> None:
    ids = encoder.tokenizer(["a photo of a cat", "broken pipe", "the plushie sky."]).input_ids  # 77 positions
    hidden = _official_hidden(encoder, ids)
    official = hidden[torch.arange(3), ids.argmax(-1)] @ encoder.lang_proj
    torch.testing.assert_close(
        encoder.encode_ids(ids, normalize=False, trim=False), official, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(encoder.encode_ids(ids, normalize=False), official, atol=1e-5, rtol=1e-5)
    tokens = encoder(ids).tokens
    mask = encoder(ids).attention_mask.bool()
    torch.testing.assert_close(tokens[mask], (hidden[:, : tokens.shape[1]] @ encoder.lang_proj)[mask])


def test_layer_norm_uses_fp32_and_tiny_eps() -> None:
    ln = LayerNormFP32(4)
    x = torch.tensor([[0.0, 1e-4, -1e-4, 0.0]])  # variance 5e-9: eps 1e-5 would shrink it to about 0.03
    expected = torch.tensor([[0.0, math.sqrt(2.0), -math.sqrt(2.0), 0.0]])
    torch.testing.assert_close(ln(x), expected, atol=1e-4, rtol=1e-4)
    half = ln.to(torch.bfloat16)(x.to(torch.bfloat16))  # statistics in fp32 even for a bf16 model
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), expected, atol=2e-2, rtol=2e-2)


def test_trimmed_equals_full_context(encoder: LanguageEncoder) -> None:
    texts = [*all_templates("traffic light"), "a much longer description of a red car parked next to a tree."]
    ids = encoder.tokenizer(texts).input_ids
    full = encoder.encode_ids(ids, trim=False)
    trimmed = encoder.encode_ids(ids)
    torch.testing.assert_close(trimmed, full, atol=1e-6, rtol=0)
    encoder.batch_size = 5  # many batches of different lengths, reassembled in input order
    torch.testing.assert_close(encoder.encode_ids(ids), full, atol=1e-6, rtol=0)


def test_tokens_after_eot_change_nothing(encoder: LanguageEncoder) -> None:
    ids = encoder.tokenizer(["a photo of a cat", "broken pipe"]).input_ids
    noisy = ids.clone()
    after_eot = torch.arange(77).unsqueeze(0) > ids.argmax(-1, keepdim=True)
    noisy[after_eot] = torch.randint(0, 40000, (int(after_eot.sum()),))
    assert not torch.equal(noisy, ids)
    torch.testing.assert_close(encoder.encode_ids(noisy, trim=False), encoder.encode_ids(ids, trim=False))
    # ...while a token before the EOT does change the result
    changed = ids.clone()
    changed[0, 5] = 1929  # cat -> dog
    assert not torch.allclose(encoder.encode_ids(changed)[0], encoder.encode_ids(ids)[0], atol=1e-4)


def test_token_level_encoding(encoder: LanguageEncoder) -> None:
    out = encoder.encode(["a cat", "a photo of a dog"], normalize=False, token_level=True)
    assert out.tokens.shape == (2, 7, TINY.dim_proj) and out.sentence.shape == (2, TINY.dim_proj)
    assert out.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]
    assert (out.tokens[0, 4:] == 0).all()
    torch.testing.assert_close(out.sentence, out.tokens[torch.arange(2), torch.tensor([3, 6])])
    torch.testing.assert_close(out.sentence, encoder.encode(["a cat", "a photo of a dog"], normalize=False))
    unit = encoder.encode(["a cat"])
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(1))


# --- class embeddings and caches ---------------------------------------------------------------------------------


def _count_forwards(encoder: LanguageEncoder) -> list[int]:
    calls = [0]
    encoder.lang_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_eval_embeddings_average_all_templates(encoder: LanguageEncoder) -> None:
    names = ["cat", "wall-other-merged"]
    got = encoder.class_embeddings(names, mode="eval")
    assert got.shape == (3, TINY.dim_proj)
    for row, name in zip(got, [*names, "background"]):
        per_template = l2_normalize(encoder.encode(all_templates(name), normalize=False))
        mean = per_template.mean(0)
        torch.testing.assert_close(row, mean / mean.norm(), atol=1e-6, rtol=0)
    assert "wall" in all_templates("wall-other-merged")[1]


def test_eval_cache_hit_and_invalidation(encoder: LanguageEncoder) -> None:
    calls = _count_forwards(encoder)
    first = encoder.class_embeddings(["cat", "dog"])
    filled = calls[0]
    assert filled >= 1
    assert encoder.class_embeddings(["cat", "dog"]) is first and calls[0] == filled
    encoder.class_embeddings(["dog", "cat"])  # a new class list re-uses the per-template cache
    assert calls[0] == filled
    encoder.class_embeddings(["dog", "bird"])  # only the new class is encoded
    assert calls[0] == filled + 1
    other = _tiny_encoder(encoder.tokenizer, seed=1)
    encoder.load_state_dict(other.state_dict())  # new weights empty the cache
    reloaded = encoder.class_embeddings(["cat", "dog"])
    assert calls[0] > filled + 1
    torch.testing.assert_close(reloaded, other.class_embeddings(["cat", "dog"]))
    assert not torch.allclose(reloaded, first)
    with torch.no_grad():
        encoder.lang_proj.mul_(-1.0)  # an in-place edit (e.g. an optimizer step) also empties it
    torch.testing.assert_close(encoder.class_embeddings(["cat", "dog"]), -reloaded)
    uncached = _tiny_encoder(encoder.tokenizer, use_cache=False)
    assert uncached.class_embeddings(["cat"]) is not uncached.class_embeddings(["cat"])


def test_train_embeddings_sample_templates_deterministically(encoder: LanguageEncoder) -> None:
    names = ["cat", "sky-other-merged", "salt+pepper"]
    calls = _count_forwards(encoder)
    first = encoder.class_embeddings(names, mode="train", rng=random.Random(3))
    after_fill = calls[0]
    again = encoder.class_embeddings(names, mode="train", rng=random.Random(3))
    assert calls[0] == after_fill  # later steps read the template cache
    torch.testing.assert_close(first, again)
    rng = random.Random(3)
    prompts = [random_template(name, rng) for name in [*names, "background"]]
    assert prompts[2].count("salt pepper") == 1
    torch.testing.assert_close(first, encoder.encode(prompts), atol=1e-6, rtol=0)
    different = encoder.class_embeddings(names, mode="train", rng=random.Random(4))
    assert not torch.allclose(first, different)
    # A trainable encoder under grad mode bypasses the cache and returns a graph, with the same values.
    encoder.requires_grad_(True)
    live = encoder.class_embeddings(names, mode="train", rng=random.Random(3))
    assert live.requires_grad
    torch.testing.assert_close(live.detach(), first, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="mode"):
        encoder.class_embeddings(names, mode="test")  # type: ignore[arg-type]


# --- similarity and input checks ---------------------------------------------------------------------------------


def test_similarity_is_scaled_cosine(encoder: LanguageEncoder) -> None:
    visual = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])  # [B=1, Q=2, D=2]
    text = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0]])  # [K=3, D=2]
    cosine = torch.tensor([[[1.0, 0.0, -1.0], [math.sqrt(0.5), math.sqrt(0.5), -math.sqrt(0.5)]]])
    with torch.no_grad():
        encoder.logit_scale.fill_(math.log(2.0))
    torch.testing.assert_close(encoder.similarity(visual, text), 2.0 * cosine)
    with torch.no_grad():
        encoder.logit_scale.fill_(math.log(1000.0))
    torch.testing.assert_close(encoder.similarity(visual, text, clamp=True), 100.0 * cosine)
    torch.testing.assert_close(encoder.similarity(visual, text), 1000.0 * cosine)
    unit = F.normalize(text, dim=-1)
    torch.testing.assert_close(encoder.similarity(visual, unit, normalize_text=False), 1000.0 * cosine)


def test_bad_inputs_name_the_problem(encoder: LanguageEncoder) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        encoder.encode_ids(torch.tensor([[SOT, 60000, EOT]]))
    with pytest.raises(ValueError, match="context_length"):
        encoder.encode_ids(torch.full((1, 78), 5), trim=False)
    with pytest.raises(ValueError, match="batch_size"):
        LanguageEncoder(TINY, batch_size=0)


def test_a_dataset_class_named_background_differs_from_the_no_object_slot():
    from seemadapt.model.templates import BACKGROUND_CLASS_TEXT, with_background

    assert with_background(["mold", "Background"]) == ["mold", BACKGROUND_CLASS_TEXT, "background"]
    torch.manual_seed(0)
    encoder = LanguageEncoder(tiny_config().language)
    embeddings = encoder.class_embeddings(["mold", "background"], mode="eval")
    assert embeddings.shape[0] == 3
    assert float(embeddings[1] @ embeddings[2]) < 0.999  # not the same text, so not the same embedding


def test_class_of_template_words_only_is_refused(tokenizer: SEEMTokenizer) -> None:
    """With class-word initialisation (the tiny preset) a class named only with template words ("a photo") has
    nothing left to embed: it must be refused by name, not trained at zero and scored NaN."""
    encoder = LanguageEncoder(tiny_config().language, tokenizer=tokenizer)
    assert encoder.config.class_word_init
    named = encoder.class_embeddings(["cat", "a photo cat"], mode="eval")
    assert torch.isfinite(named).all()
    for mode in ("eval", "train"):
        encoder.clear_cache()
        with pytest.raises(ValueError, match=r"zero embedding for the prompt '[^']*a photo"):
            encoder.class_embeddings(["cat", "a photo"], mode=mode, rng=random.Random(0))
