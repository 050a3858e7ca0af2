"""The files of a training checkpoint: their checksums, written with it, and the check before a resume loads them.

accelerate's ``load_state`` skips random states it cannot load (the resumed run then silently differs from the
uninterrupted one) and reports an unsafe optimizer file with torch's raw ``UnpicklingError``. A resume first checks
that every file is the one that was written (SHA-256 in ``trainer_state.json``) and that every pickled file loads
with the safe loader accelerate itself uses; otherwise :class:`~seemadapt.errors.ResumeError` names the file.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

from accelerate.utils import load as safe_load

from seemadapt.errors import ResumeError

__all__ = ["PICKLED_SUFFIXES", "checksums", "verify_checkpoint"]

#: Files accelerate writes with ``torch.save`` (read back with ``weights_only=True``).
PICKLED_SUFFIXES = (".bin", ".pkl", ".pt")
_CHUNK = 2**20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checksums(folder: Path, skip: str) -> dict[str, str]:
    """``relative path -> SHA-256`` of every file in ``folder`` except ``skip`` (the state file that lists them)."""
    return {
        path.relative_to(folder).as_posix(): _sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != skip
    }


def _read_state(folder: Path, state_file: str) -> dict[str, Any]:
    try:
        state = json.loads((folder / state_file).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResumeError(
            f"resume_from: {str(folder / state_file)!r} cannot be read ({error}); resume from another checkpoint "
            "or start a new output_dir."
        ) from None
    if not isinstance(state, dict):
        raise ResumeError(f"resume_from: {str(folder / state_file)!r} is not a seemadapt trainer state.")
    return state


def _check_sums(folder: Path, expected: dict[str, str]) -> None:
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise ResumeError(
                f"resume_from={str(folder)!r}: {name} is missing; the checkpoint is incomplete. Resume from "
                "another checkpoint or start a new output_dir."
            )
        if _sha256(path) != digest:
            raise ResumeError(
                f"resume_from={str(folder)!r}: {name} changed since the checkpoint was written (SHA-256 differs); "
                "it is damaged or was replaced. Resume from another checkpoint or start a new output_dir."
            )


def _check_loads(folder: Path, num_processes: int) -> None:
    for index in range(num_processes):
        if not (folder / f"random_states_{index}.pkl").is_file():
            raise ResumeError(
                f"resume_from={str(folder)!r}: random_states_{index}.pkl is missing, so the resumed run would not "
                "repeat the uninterrupted one. Resume with the number of processes the checkpoint was made with."
            )
    for path in sorted(folder.iterdir()):
        if path.suffix not in PICKLED_SUFFIXES:
            continue
        try:
            safe_load(path, map_location="cpu")
        except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ResumeError(
                f"resume_from={str(folder)!r}: {path.name} does not load safely (it may hold arbitrary Python "
                f"objects, or be damaged: {first[:200]}). It is not loaded; resume from another checkpoint or "
                "start a new output_dir."
            ) from None


def verify_checkpoint(folder: Path, state_file: str, num_processes: int) -> dict[str, Any]:
    """The checkpoint's trainer state, after checking every file it lists and every pickled file it holds."""
    state = _read_state(folder, state_file)
    files = state.get("files")
    if isinstance(files, dict):
        _check_sums(folder, files)
    _check_loads(folder, num_processes)
    return state
