"""Offline smoke run: build the tiny SD pipeline and draw two images (replaced by the full main job later)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from diffsynth.testing import tiny_pipeline

pipe = tiny_pipeline("sd1")
images = pipe(
    ["a photo of a cat", "a photo of a dog"],
    num_inference_steps=2,
    generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
).images
os.makedirs("outputs/quickstart", exist_ok=True)
for i, image in enumerate(images):
    image.save(f"outputs/quickstart/{i}.png")
print(f"wrote {len(images)} images to outputs/quickstart/")
