"""Convert an official SEEM ``.pt`` into a safetensors folder, checked against the model it will load into."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from seemadapt.model.checkpoint import (
    CheckpointError,
    as_config,
    compare_state_dicts,
    infer_config,
    read_state_dict,
    write_folder,
)
from seemadapt.model.config import SEEMConfig
from seemadapt.model.seem import SEEM

__all__ = ["convert_checkpoint"]

logger = logging.getLogger(__name__)


def convert_checkpoint(
    src: str | os.PathLike,
    dst_folder: str | os.PathLike,
    config: str | SEEMConfig | None = None,
    trust_pickle: bool = False,
    strict: bool = True,
) -> Path:
    """Convert an official SEEM ``.pt`` into a safetensors folder that :meth:`SEEM.from_pretrained` reads.

    The keys and shapes are checked against the config's model (built on the meta device, so no weights are
    allocated twice); ``criterion.empty_weight`` is dropped. Returns the folder.
    """
    src = Path(src)
    state = read_state_dict(src, trust_pickle=trust_pickle)
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    model_config = as_config(config, None) if config is not None else infer_config(shapes, src.name)
    skeleton = SEEM.from_config(model_config, device="meta")
    report = compare_state_dicts(
        {key: tuple(value.shape) for key, value in skeleton.state_dict().items()}, shapes, source=str(src)
    )
    if strict and not report.ok:
        raise CheckpointError(
            f"{src.name} does not match the {model_config.name} model:\n  " + "\n  ".join(report.problems)
        )
    logger.info("%s", report)
    return write_folder({key: state[key] for key in report.loaded}, model_config, dst_folder)
