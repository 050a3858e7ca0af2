"""What every button of the app does, as plain functions of an :class:`AppState`: the web UI only wires them up,
and tests call them directly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segreview.paths import Roots
from segreview.review import ReviewSession
from segreview.source import is_hub_id
from segreview.tryout import TryOut, parse_classes

__all__ = [
    "AppState",
    "SampleOutputs",
    "arrange",
    "click",
    "load_model",
    "open_source",
    "reject",
    "run_model",
    "sample_outputs",
    "save",
    "statistics_frame",
    "step",
]

#: (status, image, panoptic overlay, semantic overlay, legend HTML, attention maps, details markdown)
SampleOutputs = tuple[str, Any, Any, Any, str, list, str]


@dataclass
class AppState:
    """One app's state: it serves one person on their own machine, so one review and one model at a time."""

    roots: Roots
    review: ReviewSession | None = None
    tryout: TryOut = field(default_factory=TryOut)

    def session(self) -> ReviewSession:
        if self.review is None:
            raise ValueError("Open a dataset first.")
        return self.review


def sample_outputs(state: AppState) -> SampleOutputs:
    """The review tab's sample views for the current sample (empty ones when nothing is shown)."""
    if state.review is None:
        return ("Open a dataset.", None, None, None, "", [], "")
    view = state.review.view()
    if view is None:
        return (state.review.status(), None, None, None, "", [], "")
    return (
        state.review.status(),
        view.image,
        view.panoptic,
        view.semantic,
        view.legend,
        view.attention,
        view.details,
    )


def statistics_frame(state: AppState, kept_only: bool = False) -> pd.DataFrame:
    """Per-class pixels, instances, images and ignore share (long format for the charts)."""
    columns = ["class", "pixels", "instances", "images", "ignore share"]
    if state.review is None:
        return pd.DataFrame(columns=columns)
    rows = [
        (s.name, s.pixels, s.instances, s.images, round(s.ignore_share, 4))
        for s in state.review.statistics(kept_only)
    ]
    return pd.DataFrame(rows, columns=columns)


def default_output(source: str) -> str:
    """Where the kept subset goes unless the user says otherwise: next to the source, ``-reviewed``."""
    if is_hub_id(source) and not Path(source).exists():
        return source.split("@", 1)[0].replace("/", "--") + "-reviewed"
    return str(Path(source).expanduser()).rstrip("/") + "-reviewed"


def open_source(state: AppState, source: str) -> tuple[SampleOutputs, list[str], pd.DataFrame, str]:
    """Open ``source``; the first sample, the class names (for the filter), the statistics, an output folder."""
    state.review = ReviewSession.open(source, state.roots)
    names = [c.name for c in state.review.categories]
    return sample_outputs(state), names, statistics_frame(state), default_output(source)


def arrange(state: AppState, class_name: str | None, min_quality: float | None, sort: str) -> SampleOutputs:
    quality = float(min_quality) if min_quality else None
    state.session().arrange(class_name or None, quality, sort)
    return sample_outputs(state)


def step(state: AppState, count: int) -> SampleOutputs:
    state.session().move(count)
    return sample_outputs(state)


def reject(state: AppState) -> SampleOutputs:
    """Reject the current sample (or take the rejection back)."""
    state.session().toggle_reject()
    return sample_outputs(state)


def save(state: AppState, output: str) -> str:
    session = state.session()
    out = session.save(output, state.roots)
    kept = len(session.dataset) - len(session.rejected)
    return f"Saved {kept} samples to `{out}` ({len(session.rejected)} rejected, listed in its README.md)."


def load_model(state: AppState, name: str, adapters: str | None) -> str:
    return "Loaded " + state.tryout.load(name, adapters, state.roots)


def _box(text: str | None) -> list[int] | None:
    values = [v for v in (text or "").replace(" ", ",").split(",") if v]
    if not values:
        return None
    if len(values) != 4:
        raise ValueError(f"A box is four numbers x0, y0, x1, y1; got {text!r}.")
    return [int(float(v)) for v in values]


def run_model(
    state: AppState,
    image: np.ndarray | None,
    task: str,
    classes: str = "",
    things: str = "",
    sentence: str = "",
    box: str = "",
) -> tuple[np.ndarray, pd.DataFrame, str]:
    """Run the loaded model on ``image`` for ``task``; the overlay, the scores table and a summary line."""
    if image is None:
        raise ValueError("Upload an image first.")
    image = np.asarray(image)[..., :3].astype(np.uint8)
    tryout = state.tryout
    if task == "semantic":
        result = tryout.semantic(image, _required_classes(classes))
    elif task == "panoptic":
        result = tryout.panoptic(image, _required_classes(classes), parse_classes(things) or None)
    elif task == "grounding":
        if not sentence.strip():
            raise ValueError("Type a sentence for grounding.")
        result = tryout.ground(image, sentence.strip())
    else:
        result = tryout.visual(image, _box(box))  # a typed box wins over a clicked one
    frame = pd.DataFrame(result.scores, columns=["label", "score", "pixels"])
    shown = sum(1 for _, _, pixels in result.scores if pixels)
    return (
        result.overlay,
        frame,
        f"{task}: {shown} of {len(result.scores)} masks non-empty, {int(frame['pixels'].sum())} pixels.",
    )


def _required_classes(text: str) -> list[str]:
    classes = parse_classes(text)
    if not classes:
        raise ValueError("Type the class names, separated by commas.")
    return classes


def click(
    state: AppState, image: np.ndarray | None, x: int, y: int, mode: str, task: str, box: str = ""
) -> tuple[np.ndarray, pd.DataFrame, str] | None:
    """A click on the image: a point or a box corner (see ``CLICK_MODES``). In the visual-prompt task the mask
    comes at once, unless the click is the first corner of a box."""
    tryout = state.tryout
    tryout.click(x, y, mode)
    if task != "visual prompt" or (not tryout.points and tryout.box is None and not _box(box)):
        return None
    return run_model(state, image, task, box=box)
