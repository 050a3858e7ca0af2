"""What to draw: one plan per sample (prompt, classes, seed, init image), fixed before any pixel is drawn.

A plan depends only on the generation arguments and the sample's global index, so any sample can be re-made
alone, in any order, on any process (the basis of resumable and distributed generation).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffsynth.categories import Category

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of {classes}",
    "a close-up photo of {classes}",
    "a realistic photo of {classes}",
    "a high resolution photo of {classes}",
    "an image showing {classes}",
    "a detailed photo of {classes}",
)


@dataclass(frozen=True)
class SamplePlan:
    """Everything needed to draw sample ``index``: its prompt, the class names to segment, its seed."""

    index: int
    prompt: str
    classes: tuple[str, ...]
    seed: int
    init_image: int | None = None  # index into the user's init images (image-to-image)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "prompt": self.prompt,
            "classes": list(self.classes),
            "seed": self.seed,
            "init_image": self.init_image,
        }


def sample_seed(base_seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index``: independent streams per index, stable across runs and processes."""
    state = np.random.SeedSequence([int(base_seed) & 0xFFFFFFFF, int(index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def _article(name: str) -> str:
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def join_names(names: Sequence[str]) -> str:
    """Class names as an English phrase: "a cat", "a cat and a dog", "a cat, a dog and an owl"."""
    phrases = [_article(n) for n in names]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


@dataclass
class PromptPlanner:
    """Builds balanced prompts from templates.

    Classes are drawn so every class appears about equally often (a seeded shuffle of the class list,
    repeated; with ``classes_per_image`` > 1 the next distinct classes of that stream). ``context`` classes
    (stuff such as "wall", "ceiling") are added to every prompt so the whole scene gets labelled.
    """

    categories: Sequence[Category]
    templates: Sequence[str] = DEFAULT_TEMPLATES
    classes_per_image: int = 1
    context: Sequence[str] = ()
    seed: int = 0
    weights: dict[str, float] | None = None  # relative frequency per class (class-balanced when None)
    _targets: list[Category] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = {c.name for c in self.categories}
        unknown = [c for c in self.context if c not in names]
        if unknown:
            raise ValueError(f"context classes {unknown} are not among the categories {sorted(names)}.")
        self._targets = [c for c in self.categories if c.name not in set(self.context)]
        if not self._targets:
            raise ValueError("every class is a context class; at least one target class is needed.")
        if not 1 <= self.classes_per_image <= len(self._targets):
            raise ValueError(
                f"classes_per_image={self.classes_per_image} must be between 1 and the number of target "
                f"classes ({len(self._targets)})."
            )
        if not self.templates or any("{classes}" not in t for t in self.templates):
            raise ValueError("every prompt template must contain '{classes}', e.g. 'a photo of {classes}'.")
        if self.weights is not None:
            bad = [k for k, v in self.weights.items() if k not in names or v < 0]
            if bad or sum(self.weights.values()) <= 0:
                raise ValueError(f"weights must map known class names to non-negative numbers; bad: {bad}.")

    def _stream_classes(self, index: int) -> list[Category]:
        """Classes of sample ``index``: position ``index * k`` .. ``+k`` of a balanced class stream."""
        k = len(self._targets)
        per = self.classes_per_image
        chosen: list[Category] = []
        position = index * per
        while len(chosen) < per:
            cycle, offset = divmod(position, k)
            order = self._cycle_order(cycle)
            candidate = self._targets[order[offset]]
            if candidate not in chosen:
                chosen.append(candidate)
            position += 1
        return chosen

    def _cycle_order(self, cycle: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, cycle, 7])
        return rng.permutation(len(self._targets))

    def _weighted_classes(self, rng: np.random.Generator) -> list[Category]:
        assert self.weights is not None
        p = np.array([self.weights.get(c.name, 0.0) for c in self._targets], dtype=float)
        p = p / p.sum()
        picks = rng.choice(len(self._targets), size=self.classes_per_image, replace=False, p=p)
        return [self._targets[i] for i in picks]

    def prompt_for(self, index: int) -> tuple[str, tuple[str, ...]]:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, index, 11])
        targets = self._weighted_classes(rng) if self.weights else self._stream_classes(index)
        template = self.templates[int(rng.integers(len(self.templates)))]
        prompt = template.format(classes=join_names([c.name for c in targets]))
        if self.context:
            prompt += ", with " + " and ".join(self.context)
        return prompt, tuple(c.name for c in targets) + tuple(self.context)


def classes_in_prompt(prompt: str, categories: Sequence[Category]) -> tuple[str, ...]:
    """Category names that occur in a user prompt as whole words (case-insensitive)."""
    found = []
    for category in categories:
        if re.search(rf"(?<![\w-]){re.escape(category.name)}(?![\w-])", prompt, flags=re.IGNORECASE):
            found.append(category.name)
    return tuple(found)


def make_plans(
    categories: Sequence[Category],
    num_images: int,
    *,
    seed: int = 0,
    prompts: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    classes_per_image: int = 1,
    context: Sequence[str] = (),
    weights: dict[str, float] | None = None,
    num_init_images: int = 0,
    background: str | None = "background",
) -> list[SamplePlan]:
    """The plans of samples ``0..num_images-1``.

    With ``prompts`` the user's prompts are cycled; each prompt's classes are the category names it
    contains (a prompt naming none is an error). Otherwise prompts come from templates (:class:`PromptPlanner`).
    """
    if num_images <= 0:
        raise ValueError(f"num_images must be > 0, got {num_images}.")
    targets = [c for c in categories if c.name != background]
    plans = []
    planner = None
    if prompts is None:
        planner = PromptPlanner(
            targets,
            templates=tuple(templates or DEFAULT_TEMPLATES),
            classes_per_image=classes_per_image,
            context=tuple(context),
            seed=seed,
            weights=weights,
        )
    elif not prompts:
        raise ValueError("prompts is empty; give at least one prompt or leave it None to use templates.")
    for index in range(num_images):
        if planner is not None:
            prompt, classes = planner.prompt_for(index)
        else:
            prompt = prompts[index % len(prompts)]
            classes = classes_in_prompt(prompt, targets)
            if not classes:
                raise ValueError(
                    f"prompts[{index % len(prompts)}] = {prompt!r} names none of the classes "
                    f"{[c.name for c in targets]}; put at least one class name in every prompt."
                )
        init = index % num_init_images if num_init_images else None
        plans.append(SamplePlan(index, prompt, classes, sample_seed(seed, index), init))
    return plans
