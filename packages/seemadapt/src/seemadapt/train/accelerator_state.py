"""accelerate keeps one global state per process: let a second run in the same process use another precision.

``Accelerator(mixed_precision=...)`` refuses a precision other than the first run's ("AcceleratorState has
already been initialized"). In a single process nothing else holds that state between two runs, so it is
released; several processes share it through the process group, so there the error says what to do.
"""

from __future__ import annotations

from accelerate.state import AcceleratorState, PartialState, is_initialized

from seemadapt.errors import ArgumentError

__all__ = ["release_precision"]


def release_precision(mixed_precision: str) -> None:
    """Make way for an ``Accelerator`` with ``mixed_precision`` in a process whose earlier run used another."""
    previous = AcceleratorState().mixed_precision if is_initialized() else None
    if previous is None or previous == mixed_precision:
        return
    if PartialState().num_processes > 1:
        raise ArgumentError(
            f"TrainConfig.mixed_precision={mixed_precision!r}: this process already trained with "
            f"mixed_precision={previous!r}, and several processes cannot switch it; launch a new run, or keep "
            f"mixed_precision={previous!r}."
        )
    # accelerate has no public way to release its per-process state; its own test scripts reset it like this
    AcceleratorState._reset_state()
