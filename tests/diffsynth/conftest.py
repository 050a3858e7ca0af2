"""Make the shard tests' helper module importable as ``_shard_worker`` (pytest runs with --import-mode=importlib,
so sibling modules of test files are not on sys.path)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if "_shard_worker" not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        "_shard_worker", Path(__file__).with_name("_shard_worker.py")
    )
    sys.modules["_shard_worker"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["_shard_worker"])
