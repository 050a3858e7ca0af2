"""Where seemadapt keeps what it derives from datasets (registered splits, remapped mixes)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$SEEMADAPT_CACHE``, else ``$XDG_CACHE_HOME/seemadapt``, else ``~/.cache/seemadapt``."""
    env = os.environ.get("SEEMADAPT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "seemadapt"
