"""Class-mode grounding: texts that share a hash (one class, several templates) reach the decoder once, as in SEEM."""

import random

import pytest
import torch

from seemadapt.model import SEEM
from seemadapt.model.grounding import text_hash

CLASSES = ["cat", "dog", "car", "sky", "grass"]


@pytest.fixture(scope="module")
def model():
    return SEEM.from_config("tiny").eval()


def test_only_the_first_text_of_each_hash_reaches_the_decoder(model):
    texts = [["a photo of a cat.", "a cat.", "a dog."]]
    hashes = [[text_hash("cat"), text_hash("cat"), text_hash("dog")]]  # the mapper's class-mode hashes
    prompts = model.encode_grounding(texts, hashes)
    first = model.encode_grounding([["a photo of a cat.", "a dog."]])
    # tokens and padding: those of "a photo of a cat." then "a dog." ("a cat." is a second mask of the cat)
    assert prompts.tokens.shape == first.tokens.shape
    torch.testing.assert_close(prompts.tokens, first.tokens, rtol=0, atol=0)
    assert torch.equal(prompts.padding_mask, first.padding_mask)
    # the criterion still gets every text's own EOT embedding, and the given hashes
    alone = model.encode_grounding([["a cat."]]).class_embeddings[0][0]
    assert prompts.class_embeddings[0].shape == (3, 64)
    torch.testing.assert_close(prompts.class_embeddings[0][1], alone, rtol=0, atol=1e-6)
    assert prompts.hashes == hashes
    # without hashes every distinct text is its own target (text mode)
    assert model.encode_grounding(texts).tokens.shape[0] > prompts.tokens.shape[0]
    with pytest.raises(ValueError, match="one value per text"):
        model.encode_grounding(texts, [[1, 2]])


def test_forward_train_passes_the_hashes_to_the_decoder(model):
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    texts = [["a photo of a cat.", "a cat.", "a dog."]]
    hashes = [[text_hash("cat"), text_hash("cat"), text_hash("dog")]]
    with torch.no_grad():
        grouped = model([image], CLASSES, texts, rng=random.Random(0), grounding_hash=hashes)
        first = model([image], CLASSES, [["a photo of a cat.", "a dog."]], rng=random.Random(0))
        ungrouped = model([image], CLASSES, texts, rng=random.Random(0))
    torch.testing.assert_close(grouped["pred_gmasks"], first["pred_gmasks"], rtol=0, atol=1e-6)
    assert not torch.allclose(grouped["pred_gmasks"], ungrouped["pred_gmasks"], atol=1e-4)
    assert grouped["grounding_hash"] == hashes and len(grouped["grounding_class_embs"][0]) == 3
