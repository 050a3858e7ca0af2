"""Test-wide settings: never reach for the network, draw no windows, keep CPU threads modest."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tests run tiny models: one intra-op thread per process is fastest and keeps multi-process tests from
# oversubscribing the 2 CI cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
