"""CLIP's BPE vocabulary, rebuilt offline from the ``bpe_simple_vocab_16e6.txt.gz`` file in ``open-clip-torch``.

The vocabulary order (256 byte characters, the same with ``</w>``, one entry per merge, then SOT and EOT) is what
makes the ids equal Hugging Face's ``vocab.json``: SOT 49406, EOT 49407, 49408 entries. Both SDKs build their
offline tokenizers from it, so no download is ever needed.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

__all__ = [
    "BPE_FILENAME",
    "CLIP_VOCAB_SIZE",
    "EOT_TEXT",
    "NUM_MERGES",
    "SOT_TEXT",
    "bytes_to_unicode",
    "default_bpe_path",
    "load_clip_bpe",
]

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE = 49408
NUM_MERGES = 49152 - 256 - 2  # the merges that CLIP's 49408-entry vocabulary uses
SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-character table: printable Latin-1 bytes map to themselves, the other 68 to U+0100...

    The dict's *order* matters: it is the order of the first 256 vocabulary entries (printable bytes first).
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


def default_bpe_path() -> Path:
    """Location of the BPE file inside the installed ``open_clip`` package (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The CLIP BPE vocabulary ships with open-clip-torch, which is not installed: "
            "`pip install segcontract[clip]` (or open-clip-torch), or pass the path of a BPE file."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{BPE_FILENAME} not found in the open_clip package at {path.parent}.")
    return path


@functools.lru_cache(maxsize=4)
def load_clip_bpe(path: str | None = None) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """CLIP's vocabulary and merges from a BPE file (default: open_clip's copy)."""
    file = Path(path) if path is not None else default_bpe_path()
    with gzip.open(file, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : 1 + NUM_MERGES])  # line 0 is a version header
    if len(merges) != NUM_MERGES or any(len(pair) != 2 for pair in merges):
        raise ValueError(
            f"{file} is not a CLIP BPE file: expected {NUM_MERGES} merge pairs after the header."
        )
    byte_chars = list(bytes_to_unicode().values())
    tokens = [*byte_chars, *(char + "</w>" for char in byte_chars), *("".join(pair) for pair in merges)]
    tokens += [SOT_TEXT, EOT_TEXT]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(
            f"{file}: unexpected CLIP vocabulary size {len(vocab)} (expected {CLIP_VOCAB_SIZE})."
        )
    return vocab, merges  # type: ignore[return-value]
