"""CPU training heap settings: large blocks stay in the heap while set; afterwards they are mapped again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import seemadapt
from seemadapt import heap
from seemadapt.heap import freed_memory_kept, keep_freed_memory
from seemadapt.model import SEEM
from seemadapt.testing import make_contract_dataset

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Run in a fresh interpreter: the settings are process-wide.
HEAP_CHECK = textwrap.dedent(
    """
    import ctypes
    from seemadapt.heap import keep_freed_memory, release_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MiB)

    def mapped_by(size):
        before = libc.mallinfo2().hblkhd
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        mapped = libc.mallinfo2().hblkhd - before
        return block, mapped

    block, default_mapped = mapped_by(size)
    libc.free(block)
    applied = keep_freed_memory()
    block, kept_mapped = mapped_by(size)
    libc.free(block)
    released = release_freed_memory()
    block, after_mapped = mapped_by(size)
    libc.free(block)
    print(default_mapped >= size, applied, kept_mapped, released, after_mapped >= size)
    """
)


def test_keep_freed_memory_rejects_a_non_positive_limit():
    with pytest.raises(ValueError, match="limit"):
        keep_freed_memory(0)


@pytest.mark.skipif(not GLIBC, reason="glibc heap settings")
def test_large_blocks_come_from_the_heap_once_set_and_go_back_on_release():
    source = str(Path(seemadapt.__file__).parents[1])  # this checkout's seemadapt, whatever is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", HEAP_CHECK], capture_output=True, text=True, check=True, env=env
    )
    default_mapped, applied, kept_mapped, released, mapped_again = done.stdout.split()
    assert default_mapped == "True"  # glibc's default maps such a block from the kernel
    assert applied == "True"
    assert kept_mapped == "0"  # now it is carved from the heap (and reused after free)
    assert released == "True"  # the freed 64 MiB go back to the kernel at the end of training
    assert (
        mapped_again == "True"
    )  # and afterwards such blocks are mapped from the kernel again, as by default


def test_nested_blocks_keep_the_setting_until_the_outermost_ends(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda **_: calls.append("keep"))
    monkeypatch.setattr(heap, "release_freed_memory", lambda: calls.append("release"))
    with freed_memory_kept():  # e.g. training
        with freed_memory_kept(), freed_memory_kept("cuda"):  # its evaluation; work on another device
            calls.append("work")
        calls.append("more steps")
    assert calls == ["keep", "work", "more steps", "release"]
    with pytest.raises(RuntimeError), freed_memory_kept():
        raise RuntimeError("a failed run still hands the memory back")
    assert calls[-2:] == ["keep", "release"]


def test_predict_and_evaluate_on_cpu_keep_freed_memory_once(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda **_: calls.append("keep"))
    monkeypatch.setattr(heap, "release_freed_memory", lambda: calls.append("release"))
    model = SEEM.from_config("tiny").eval()
    data = make_contract_dataset(
        num_images=2, size=(40, 48), classes=["square", "disc", "background"], seed=0
    )
    image = torch.zeros(3, 40, 48, dtype=torch.uint8)
    model.predict(image, ["square", "disc"], task="semantic")
    assert calls == ["keep", "release"]
    seemadapt.evaluate(model, data, batch_size=1, progress=False)  # two predicts inside one evaluate
    assert calls == ["keep", "release"] * 2


def test_a_process_wide_setting_is_left_alone_by_the_blocks(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_glibc", lambda: None)  # no real settings in this process
    keep_freed_memory()  # the user's: for a long-running inference process
    monkeypatch.setattr(heap, "release_freed_memory", lambda: calls.append("release"))
    with freed_memory_kept():
        calls.append("predict")
    assert calls == ["predict"]  # not handed back after the call
    monkeypatch.undo()
    heap.release_freed_memory()  # the user's own release ends it
    assert not heap._process_wide
