"""Prompt templates and class-name cleaning for SEEM's open-vocabulary classifier.

SEEM (like X-Decoder) never learns class weights: each class is a sentence such as ``"a photo of a cat."`` run
through the frozen text encoder. Training picks one of the 81 templates at random per class and step; evaluation
averages all 81. The list is the 80 ImageNet prompts of the CLIP paper preceded by the bare ``"{}."``, in the order
SEEM uses, so random draws index the same templates as the official code.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

BACKGROUND = "background"
"""The class text SEEM appends after the dataset's classes (the "no object" column of the classifier)."""

PROMPT_TEMPLATES: tuple[str, ...] = (
    "{}.",
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

_DATASET_SUFFIXES = ("-other", "-merged", "-stuff")

Rng = random.Random | np.random.Generator | None


def clean_class_name(name: str) -> str:
    """Drop COCO's bookkeeping suffixes (``"wall-other-merged"`` -> ``"wall"``), as SEEM does in both modes."""
    for suffix in _DATASET_SUFFIXES:
        name = name.replace(suffix, "")
    return name


def training_class_text(name: str) -> str:
    """The class text SEEM puts into a *training* prompt: cleaned, ``','`` removed and ``'+'`` -> space.

    The official evaluation path applies only :func:`clean_class_name`; the two differ only for names holding
    ``','`` or ``'+'``, and we keep that difference so official checkpoints score exactly as published.
    """
    return clean_class_name(name).replace(",", "").replace("+", " ")


def draw_template_index(rng: Rng = None, num_templates: int = len(PROMPT_TEMPLATES)) -> int:
    """A uniform template index from ``rng`` (``random.Random``, a numpy ``Generator``, or the global numpy RNG)."""
    if rng is None:
        return int(np.random.randint(num_templates))
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(num_templates))
    if isinstance(rng, random.Random):
        return rng.randrange(num_templates)
    raise TypeError(f"rng must be random.Random, numpy.random.Generator or None, got {type(rng).__name__}.")


def random_template(name: str, rng: Rng = None) -> str:
    """One training prompt for ``name``: a uniformly drawn template filled with :func:`training_class_text`."""
    return PROMPT_TEMPLATES[draw_template_index(rng)].format(training_class_text(name))


def all_templates(name: str) -> list[str]:
    """The 81 evaluation prompts for ``name`` (filled with :func:`clean_class_name`), in template order."""
    filler = clean_class_name(name)
    return [template.format(filler) for template in PROMPT_TEMPLATES]


#: Prompt text of a *dataset* class named "background" (the contract's explicit stuff class). SEEM's own no-object
#: slot is also "background"; two identical texts would get identical embeddings, capping that class's score at 0.5
#: (below the panoptic threshold), so the dataset class is encoded with this text instead.
BACKGROUND_CLASS_TEXT = "plain background"


def with_background(class_names: Sequence[str]) -> list[str]:
    """``class_names + ["background"]``: SEEM's classifier always ends with the background (no-object) text.

    A class of the dataset itself named "background" is encoded as :data:`BACKGROUND_CLASS_TEXT`, so it stays
    distinguishable from the no-object slot.
    """
    names = [BACKGROUND_CLASS_TEXT if n.strip().lower() == BACKGROUND else n for n in class_names]
    return [*names, BACKGROUND]
