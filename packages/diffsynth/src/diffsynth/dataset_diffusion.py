"""Dataset Diffusion's generation recipe (Nguyen et al., NeurIPS 2023, ``gen_data.py`` of its official release).

The values :meth:`diffsynth.MaskerConfig.dataset_diffusion` builds its preset from, kept in one place. The image is drawn
from ``"<caption>; <class> <class> ..."`` and the cross-attention keys come from the class-only prompt
``"<class> <class> ..."`` run through the same UNet call.
"""

from __future__ import annotations

#: The fixed quality negative prompt of every Dataset Diffusion image (its three string pieces are joined without
#: spaces, hence "face,out" and "anatomy,watermark").
NEGATIVE_PROMPT = (
    "ugly, tiling, poorly drawn hands, poorly drawn feet, poorly drawn face,"
    "out of frame, extra limbs, disfigured, deformed, body out of frame, bad anatomy,"
    "watermark, signature, cut off, low contrast, underexposed, overexposed, bad art, beginner, amateur, distorted face"
)
#: Denoising steps; the attention of all of them is averaged.
NUM_INFERENCE_STEPS = 100
GUIDANCE_SCALE = 7.5
#: Class names are joined by spaces, in the class prompt and after the caption's "; ".
CLASS_SEPARATOR = " "
#: Self-attention at 32x32 and cross-attention at 16x16 for 512 px SD 1.5 (latent 64): latent/2 and latent/4.
SELF_RESOLUTION = 0.5
CROSS_RESOLUTION = 0.25
TAU = 4
THRESHOLD = 0.6
UNCERTAINTY_THRESHOLD = 0.5

__all__ = [
    "CLASS_SEPARATOR",
    "CROSS_RESOLUTION",
    "GUIDANCE_SCALE",
    "NEGATIVE_PROMPT",
    "NUM_INFERENCE_STEPS",
    "SELF_RESOLUTION",
    "TAU",
    "THRESHOLD",
    "UNCERTAINTY_THRESHOLD",
]
