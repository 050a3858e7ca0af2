"""Test-wide settings: never reach for the network, draw no windows, keep CPU threads modest."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

# Test modules import the shared helpers ``unwritable`` (read-only folders) and ``fake_hub`` (whoami answers) by
# name: pytest's importlib mode puts no test folder on sys.path.
for _name in ("unwritable", "fake_hub"):
    if _name not in sys.modules:
        _spec = importlib.util.spec_from_file_location(_name, Path(__file__).with_name(f"{_name}.py"))
        sys.modules[_name] = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(sys.modules[_name])

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tests run tiny models: one intra-op thread per process is fastest and keeps multi-process tests from
# oversubscribing the 2 CI cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# CI runs `uv run pytest`: Ray's local workers must run on this interpreter (see diffsynth/ray/__init__.py); set
# before any test module imports ray.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# The pretrained tiny model (seemadapt.pretrained_tiny) is built once per machine and code version, not per session:
# its cache key hashes the code, so a stale one is never used.
os.environ.setdefault(
    "SEEMADAPT_PRETRAINED_TINY", os.path.join(tempfile.gettempdir(), "seemadapt-pretrained-tiny")
)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models: one intra-op thread is fastest and does not fight other jobs (OMP_NUM_THREADS above covers
    subprocesses; this covers a torch already imported before this file)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
