"""Where a sharded run puts what: the fixed shard boundaries and the names of an output folder's files."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CACHE_DIR",
    "DATA_DIR",
    "DEFAULT_SHARD_SIZE",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "SHARD_KEY",
    "SPLIT",
    "STATS_KEY",
    "ShardLayout",
    "ShardMismatchError",
]

DEFAULT_SHARD_SIZE = 100
MANIFEST = "manifest.json"
DATA_DIR = "data"
CACHE_DIR = ".cache"
SPLIT = "train"
MANIFEST_FORMAT = 1
#: Schema-metadata key of a shard's own record (fingerprint, sample range).
SHARD_KEY = b"diffsynth_shard"
#: File-metadata key of the generator's run statistics over this shard alone (e.g. quality counters).
STATS_KEY = b"diffsynth_stats"


class ShardMismatchError(ValueError):
    """An output folder holds shards of a different run; the message names the differing fields."""


@dataclass(frozen=True)
class ShardLayout:
    """Fixed shard boundaries: shard ``k`` holds samples ``[k * shard_size, min((k + 1) * shard_size, n))``."""

    num_images: int
    shard_size: int = DEFAULT_SHARD_SIZE

    def __post_init__(self) -> None:
        for name in ("num_images", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ShardLayout.{name} must be an int >= 1, got {value!r}.")

    @property
    def num_shards(self) -> int:
        return -(-self.num_images // self.shard_size)

    def bounds(self, k: int) -> tuple[int, int]:
        if not 0 <= k < self.num_shards:
            raise IndexError(f"shard {k} is out of range 0..{self.num_shards - 1}.")
        return k * self.shard_size, min((k + 1) * self.shard_size, self.num_images)

    def file_name(self, k: int) -> str:
        return f"{SPLIT}-{k:05d}-of-{self.num_shards:05d}.parquet"
