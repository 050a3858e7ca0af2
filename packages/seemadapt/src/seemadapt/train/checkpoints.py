"""Training checkpoints: the trainer's state file, finding a checkpoint to resume from, and the weights it holds.

A checkpoint is accelerate's ``save_state`` folder (model, optimizer, scheduler, gradient scaler, RNGs) plus
``trainer_state.json`` (:class:`TrainState`), written last, so its presence marks a complete checkpoint. Only the
trained and adapter weights are kept (:class:`CheckpointWeights`), not the frozen base.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open

from seemadapt.errors import OutputPathError
from seemadapt.train.checkpoint_files import checksums

__all__ = [
    "BEST_DIR",
    "CHECKPOINTS",
    "STATE_FILE",
    "CheckpointWeights",
    "TrainState",
    "checkpoint_dirs",
    "find_checkpoint",
    "save_checkpoint",
]

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
BEST_DIR = "best"


@dataclass
class TrainState:
    """What the trainer adds to accelerate's checkpoint: counters, the history and the best evaluation."""

    step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    best_metric: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    eval_history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "best_metric": self.best_metric,
            "history": self.history,
            "eval_history": self.eval_history,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{k: data[k] for k in cls().to_dict() if k in data})


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints (``trainer_state.json`` present), oldest first."""
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[-1]))


def find_checkpoint(output_dir: str | Path, resume_from: str) -> Path | None:
    """The checkpoint folder ``resume_from`` names: ``"latest"`` (``None`` when there is none yet) or a folder."""
    if resume_from == "latest":
        found = checkpoint_dirs(Path(output_dir))
        return found[-1] if found else None
    path = Path(resume_from).expanduser()
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"TrainConfig.resume_from={resume_from!r} is not a complete seemadapt checkpoint (no {STATE_FILE}); "
            f"pass 'latest' or a folder like {Path(output_dir) / CHECKPOINTS / 'step_00000100'}."
        )
    return path


def save_checkpoint(accelerator: Any, output_dir: Path, state: TrainState, save_total_limit: int) -> None:
    """accelerate's state, then ``trainer_state.json``, into ``checkpoints/step_XXXXXXXX``; keeps the newest
    ``save_total_limit`` checkpoints. Every process must call it (it synchronises)."""
    folder = output_dir / CHECKPOINTS / f"step_{state.step:08d}"
    if (folder / STATE_FILE).is_file():
        return
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(folder))
        accelerator.wait_for_everyone()  # every process's random states are written before they are summed
        if accelerator.is_main_process:
            record = dict(state.to_dict(), files=checksums(folder, STATE_FILE))
            (folder / STATE_FILE).write_text(json.dumps(record, indent=1))
    except (OSError, RuntimeError) as error:
        # Disk full: torch says "enforce fail at inline_container.cc" (a RuntimeError), others an OSError.
        if not isinstance(error, OSError) and "inline_container" not in str(error):
            raise
        if accelerator.is_main_process:  # an incomplete checkpoint (no state file) is never resumed: free it
            shutil.rmtree(folder, ignore_errors=True)
        raise OutputPathError(
            f"TrainConfig.output_dir={str(output_dir)!r}: writing checkpoint {folder.name} failed "
            f"({str(error).splitlines()[0][:200]}); free disk space or choose another output_dir, then resume "
            "with resume_from='latest'."
        ) from error
    if accelerator.is_main_process:
        for old in checkpoint_dirs(output_dir)[:-save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


class CheckpointWeights:
    """accelerate's save/load hooks that keep a checkpoint to the weights that train.

    ``keys`` gives the state-dict keys to keep (the adapters and trained parameters); loading checks that a
    checkpoint holds exactly those, so a checkpoint of another model or placement fails before anything trains.
    """

    def __init__(self, keys: Callable[[], set[str]]) -> None:
        self.keys = keys

    def register(self, accelerator: Any) -> None:
        accelerator.register_save_state_pre_hook(self.save_hook)
        accelerator.register_load_state_pre_hook(self.load_hook)

    @staticmethod
    def strip(key: str) -> str:
        """``key`` without DDP / compile wrapper prefixes."""
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        return key

    def save_hook(self, models: list, weights: list, output_dir: str) -> None:
        keep = self.keys()
        for i, state in enumerate(weights):
            # safetensors refuses strided tensors (the adapters' channels-last conv weights)
            weights[i] = {k: v.contiguous() for k, v in state.items() if self.strip(k) in keep}

    def load_hook(self, models: list, input_dir: str) -> None:
        path = Path(input_dir) / "model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {input_dir} has no model.safetensors; it is not a seemadapt checkpoint."
            )
        with safe_open(str(path), framework="pt") as handle:
            saved = {self.strip(k) for k in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        expected = self.keys()
        missing, unexpected = sorted(expected - saved), sorted(saved - expected)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {input_dir} does not match this model and placement: {len(missing)} weights missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). Resume with the same "
                "model and strategy, or start a new output_dir."
            )
