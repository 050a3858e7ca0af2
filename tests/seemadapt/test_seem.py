"""The assembled SEEM model: construction, parameter counts, input handling, inference and the training forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from seemadapt.model import SEEM
from seemadapt.model.images import resized_size

CLASSES = ["cat", "dog", "sky-other-merged", "grass"]
MEAN = (123.675, 116.280, 103.530)
STD = (58.395, 57.120, 57.375)


@pytest.fixture(scope="module")
def model() -> SEEM:
    return SEEM.from_config("tiny").eval()


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=generator),
        torch.randint(0, 256, (3, 48, 40), dtype=torch.uint8, generator=generator),
    ]


# ------------------------------------------------------------------------------------------------ construction


def test_tiny_is_reproducible_and_leaves_the_global_rng_alone():
    before = torch.random.get_rng_state()
    first = SEEM.from_config("tiny").state_dict()
    second = SEEM.from_config("tiny").state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_module_layout_and_buffers(model):
    state = model.state_dict()
    assert torch.equal(state["dilation_kernel"], torch.ones(1, 1, 3, 3))
    assert "pixel_mean" not in state and "pixel_std" not in state
    assert model.pixel_mean.shape == (3, 1, 1)
    assert {name.split(".")[0] for name in state} == {"backbone", "sem_seg_head", "dilation_kernel"}
    assert model.sem_seg_head.predictor.lang_encoder is model.language_encoder


@pytest.mark.parametrize(
    ("name", "total", "backbone", "pixel_decoder"),
    [("focalt", 164_619_249, 29_922_288, 31_456_256), ("focall", 341_181_177, 205_746_936, 32_193_536)],
)
def test_full_size_parameter_counts_on_meta(name, total, backbone, pixel_decoder):
    big = SEEM.from_config(name, device="meta")
    assert big.device.type == "meta"
    counts = big.parameter_counts()
    assert counts["total"] == total
    assert counts["backbone"] == backbone and counts["pixel_decoder"] == pixel_decoder
    assert counts["language_encoder"] == 63_428_097
    assert counts["decoder"] == 39_812_608 and counts["interactive"] == 820_224
    assert counts["adapters"] == 0 and counts["trainable"] == total
    assert f"{total:,}" in big.summary()


def test_summary_splits_trainable_frozen_and_adapters():
    from seemadapt.adapters.modules import ChannelSpatialAdapter

    net = SEEM.from_config("tiny")
    net.language_encoder.requires_grad_(False)
    _, block, channels = next(net.backbone.blocks())
    block.adapter = ChannelSpatialAdapter(channels)
    counts = net.parameter_counts()
    adapter_size = sum(p.numel() for p in block.adapter.parameters())
    assert counts["adapters"] == adapter_size > 0
    assert counts["frozen"] == counts["language_encoder"]
    assert counts["trainable"] + counts["frozen"] == counts["total"]
    assert all(key.startswith("backbone.layers.0.blocks.0.adapter.") for key in net.adapter_state_keys())
    text = net.summary()
    assert "adapters" in text and f"{adapter_size:,}" in text and f"{counts['frozen']:,}" in text


# ------------------------------------------------------------------------------------------------ input handling


def test_preprocess_normalises_pads_and_accepts_every_image_type(model):
    tall = torch.zeros(3, 50, 30, dtype=torch.uint8)
    tall[0] = 255
    array = np.full((20, 70, 3), 128, dtype=np.uint8)
    pil = Image.fromarray(np.zeros((33, 33, 3), dtype=np.uint8))
    batch = model.preprocess([tall, array, pil])
    assert batch.tensor.shape == (3, 3, 64, 96)  # max 50 -> 64, max 70 -> 96
    assert batch.image_sizes == [(50, 30), (20, 70), (33, 33)] == batch.original_sizes
    torch.testing.assert_close(batch.tensor[0, 0, 0, 0].item(), (255 - MEAN[0]) / STD[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(batch.tensor[0, 1, 0, 0].item(), (0 - MEAN[1]) / STD[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(batch.tensor[1, 2, 5, 5].item(), (128 - MEAN[2]) / STD[2], rtol=0, atol=1e-5)
    assert (batch.tensor[0, :, 50:] == 0).all() and (
        batch.tensor[0, :, :, 30:] == 0
    ).all()  # pad after normalising
    single = model.preprocess(array)
    assert single.tensor.shape == (1, 3, 32, 96)


def test_preprocess_rejects_channel_last_tensors(model):
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        model.preprocess(torch.zeros(20, 20, 3, dtype=torch.uint8))


def test_short_edge_resize_geometry(model):
    assert resized_size((480, 640), 240, None) == (240, 320)
    assert resized_size((100, 1000), 80, 400) == (40, 400)
    batch = model.preprocess(torch.zeros(3, 48, 40, dtype=torch.uint8), short_edge=20)
    assert batch.image_sizes == [(24, 20)] and batch.original_sizes == [(48, 40)]
    assert batch.tensor.shape[-2:] == (32, 32)


def test_encode_image_shapes(model, images):
    mask_features, multi_scale, sizes = model.encode_image(images)
    assert mask_features.shape == (2, 64, 16, 16)
    assert [tuple(x.shape[-2:]) for x in multi_scale] == [(2, 2), (4, 4), (8, 8)]
    assert sizes == [(64, 64), (48, 40)]


# ------------------------------------------------------------------------------------------------ inference


def test_predict_semantic_at_original_sizes(model, images):
    results = model.predict(images, CLASSES, task="semantic")
    assert [tuple(r["sem_seg"].shape) for r in results] == [(4, 64, 64), (4, 48, 40)]
    for result in results:
        assert torch.equal(result["labels"], result["sem_seg"].argmax(0))
        assert (result["sem_seg"] >= 0).all() and torch.isfinite(result["sem_seg"]).all()


def test_predict_batched_equals_one_by_one(model, images):
    batched = model.predict(images, CLASSES, task="semantic")
    alone = model.predict(images[1], CLASSES, task="semantic")  # same padded size (64x64) as in the batch
    assert isinstance(alone, dict)
    torch.testing.assert_close(batched[1]["sem_seg"], alone["sem_seg"], atol=1e-4, rtol=1e-4)


def test_predict_panoptic_and_instance(model, images):
    panoptic = model.predict(
        images, CLASSES, task="panoptic", thing_classes=["cat", "dog"], object_mask_threshold=0.0
    )
    for result, size in zip(panoptic, [(64, 64), (48, 40)]):
        seg = result["panoptic_seg"]
        assert seg.shape == size and seg.dtype == torch.int32
        ids = {s["id"] for s in result["segments_info"]}
        assert set(torch.unique(seg).tolist()) <= ids | {0}
        for segment in result["segments_info"]:
            assert segment["isthing"] == (segment["category_id"] in (0, 1))
            assert segment["area"] == int((seg == segment["id"]).sum())
    instance = model.predict(images, CLASSES, task="instance", thing_classes=[0, 1], top_k=5)
    for result, size in zip(instance, [(64, 64), (48, 40)]):
        assert result["masks"].shape[1:] == size and result["masks"].dtype == torch.bool
        assert len(result["scores"]) == len(result["labels"]) == len(result["masks"]) <= 5
        assert set(result["labels"].tolist()) <= {0, 1}
        assert (result["scores"][:-1] >= result["scores"][1:]).all()


def test_predict_resizes_back_to_the_given_size(model, images):
    result = model.predict(images[1], CLASSES, short_edge=24, task="instance")
    assert result["masks"].shape[1:] == (48, 40)


def test_predict_validates_arguments(model, images):
    with pytest.raises(ValueError, match="task"):
        model.predict(images, CLASSES, task="depth")
    with pytest.raises(ValueError, match="thing_classes"):
        model.predict(images, CLASSES, task="panoptic", thing_classes=["horse"])
    with pytest.raises(ValueError, match="unique"):
        model.predict(images, ["cat", "cat"])


def test_predict_restores_training_mode_and_leaves_training_usable(images):
    net = SEEM.from_config("tiny")
    net.language_encoder.requires_grad_(False)
    net.train()
    net.predict(images, CLASSES)  # fills the text-embedding cache
    assert net.training
    outputs = net.forward_train(images, CLASSES)  # reads that cache with autograd on
    (outputs["pred_logits"].sum() + outputs["pred_masks"].sum()).backward()
    assert net.sem_seg_head.predictor.class_embed.grad is not None


def test_ground_returns_one_mask_per_sentence_at_the_image_size(model, images):
    sentences = ["the cat on the left", "a dog", "grass"]
    out = model.ground(images[1], sentences)
    assert out["masks"].shape == out["mask_logits"].shape == (3, 48, 40)
    assert torch.equal(out["masks"], out["mask_logits"] > 0)
    assert out["scores"].shape == (3,) and ((out["scores"] > 0) & (out["scores"] <= 1)).all()
    assert out["query_indices"].max() < model.config.decoder.num_queries
    with pytest.raises(ValueError, match="one image"):
        model.ground(images, sentences)


# ------------------------------------------------------------------------------------------------ training forward


def test_encode_grounding_deduplicates_and_pads(model):
    texts = [["a cat", "a cat", "the big dog"], None, ["a cat"]]
    prompts = model.encode_grounding(texts)
    lengths = model.language_encoder.tokenize(["a cat", "the big dog"]).lengths.tolist()
    assert prompts.tokens.shape == (lengths[0] + lengths[1], 3, 64)
    assert prompts.padding_mask[0].sum() == 0
    assert prompts.padding_mask[1].all()
    assert prompts.padding_mask[2].sum() == lengths[1]
    assert (prompts.tokens[prompts.padding_mask.t()] == 0).all()
    assert prompts.class_embeddings[1] is None
    first = prompts.class_embeddings[0]
    assert first.shape == (3, 64) and torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])
    torch.testing.assert_close(prompts.class_embeddings[2][0], first[0])
    assert prompts.hashes[0][0] == prompts.hashes[0][1] == prompts.hashes[2][0] != prompts.hashes[0][2]
    assert prompts.hashes[1] == []
    # the first image's tokens are the valid tokens of "a cat" then of "the big dog"
    alone = model.encode_grounding([["the big dog"]])
    torch.testing.assert_close(prompts.tokens[lengths[0] :, 0], alone.tokens[:, 0])


def test_forward_train_outputs_and_gradients(images):
    import random

    net = SEEM.from_config("tiny").train()
    net.language_encoder.requires_grad_(False)
    outputs = net(images, CLASSES, grounding=[["a cat", "a cat", "a dog"], None], rng=random.Random(0))
    q = net.config.decoder.num_queries
    assert outputs["pred_logits"].shape == (2, q, len(CLASSES) + 1)
    assert outputs["pred_masks"].shape == outputs["pred_gmasks"].shape == (2, q, 16, 16)
    assert len(outputs["aux_outputs"]) == net.config.decoder.dec_layers - 1
    assert outputs["class_embeddings"].shape == (len(CLASSES) + 1, 64)
    assert outputs["grounding_class_embs"][0].shape == (3, 64) and outputs["grounding_class_embs"][1] is None
    assert outputs["logit_scale"] is net.language_encoder.logit_scale
    assert outputs["padded_size"] == (64, 64) and outputs["image_sizes"] == [(64, 64), (48, 40)]
    loss = outputs["pred_logits"].logsumexp(-1).sum() + outputs["pred_gmasks"].sigmoid().sum()
    loss.backward()
    assert net.sem_seg_head.predictor.query_feat.weight.grad is not None
    assert net.language_encoder.lang_proj.grad is None
    with pytest.raises(ValueError, match="grounding"):
        net(images, CLASSES, grounding=[["a cat"]])
